"""A randomized fault campaign: a tiny training run driven to completion through N seeded faults,
its outputs then compared byte for byte with an uninterrupted run of the same config.

    python scripts/fault_campaign.py --faults 50 --seed 0 [--workdir-root DIR] [--epochs 1]
        [--data-root DIR] [--run-set KEY=VALUE ...] [--latest-moment-s S]

Faults, each at a seeded moment: ``kill9`` (SIGKILL to the run's process group), ``sigterm`` (a
preemption notice), ``corrupt_checkpoint`` (a file of the latest checkpoint cut or its bytes
flipped while no run is going), ``full_disk`` (the next attempt runs under an RLIMIT_FSIZE its
checkpoint write cannot fit) and ``second_command`` (the same command started on the workdir
while a run holds it: it must be refused in one line, exit 2). After each fault the same command
is run again. A round ends when an attempt completes; its ``eval/test_predictions.csv`` and its
best checkpoint's arrays are compared with the reference run's, and the next round starts in a
fresh workdir until N faults have been injected. Prints ONE JSON line with the counts.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from fault_runs import (
    ATTEMPT_TIMEOUT_S,
    CORRUPTIONS,
    ROOT,
    Runner,
    corrupt,
    dump_arrays,
    finish,
    last_line,
    latest_checkpoint,
    lock_pid,
    prepare_data,
    read,
)

KINDS = ("kill9", "sigterm", "corrupt_checkpoint", "full_disk", "second_command")
FILE_SIZE_LIMIT = 64 << 10  # bytes: smaller than the tiny model's checkpoint array file
PREEMPTED = 75  # cxrjax.io.preemption.PREEMPTED_EXIT_CODE (not imported: no JAX here)


class Campaign:
    """The rounds, the faults and their counts."""

    def __init__(self, root: str, seed: int, epochs: int,
                 corruptions: tuple[str, ...] = CORRUPTIONS, data_root: str | None = None,
                 overrides: tuple[str, ...] = ()):
        self.root, self.rng, self.corruptions = root, random.Random(seed), corruptions
        self.logs = os.path.join(root, "logs")
        os.makedirs(self.logs, exist_ok=True)
        data = prepare_data(data_root or os.path.join(root, "data"))
        cache = os.environ.get("CXRJAX_COMPILE_CACHE", "off")  # a test session's shared one
        cache = cache if cache != "off" else os.path.join(root, "compile_cache")
        self.runner = Runner(data, epochs, cache, self.logs, overrides)
        self.injected: collections.Counter = collections.Counter()
        self.missed: collections.Counter = collections.Counter()
        self.outcomes: collections.Counter = collections.Counter()  # "kind:exit code"
        self.unexpected: list[str] = []
        self.tracebacks: collections.Counter = collections.Counter()  # attempts, by fault
        self.refusals = self.resumes = self.reruns = self.set_aside = 0
        self.rounds = self.bytes_compared = self.mismatches = 0
        self.reference: dict[str, bytes] = {}
        self.reference_wall = 0.0
        self.deck: list[str] = []
        self.horizon = 0.0  # an attempt's expected length: the reference's, then a rerun's
        self.deadline = float("inf")  # no new fault after this time.monotonic()
        self.latest_moment = float("inf")  # a signal's moment: at most this far into an attempt

    # -- the reference -------------------------------------------------------------------
    def outputs(self, workdir: str) -> dict[str, bytes]:
        """``eval/test_predictions.csv`` and each array of the best checkpoint, as bytes."""
        import numpy as np

        out = os.path.join(self.root, "arrays.npz")
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--dump-arrays",
                               workdir, out], cwd=ROOT, env=self.runner.env,
                              capture_output=True, text=True, timeout=ATTEMPT_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"cannot read the arrays of {workdir}: {last_line(done.stderr)}")
        with open(os.path.join(workdir, "eval", "test_predictions.csv"), "rb") as f:
            files = {"eval/test_predictions.csv": f.read()}
        with np.load(out) as saved:
            for key in saved.files:
                a = saved[key]
                files[f"array {key}"] = f"{a.dtype}{a.shape}".encode() + b"|" + a.tobytes()
        return files

    def run_reference(self) -> None:
        workdir = os.path.join(self.root, "reference")
        shutil.rmtree(workdir, ignore_errors=True)
        started = time.monotonic()
        proc, log = self.runner.start(workdir)
        if finish(proc) != 0:
            raise RuntimeError(f"the uninterrupted run failed: {last_line(read(log))}")
        self.reference_wall = time.monotonic() - started
        self.rerun_wall = 0.6 * self.reference_wall  # until reruns are measured
        self.reference = self.outputs(workdir)

    def compare(self, workdir: str) -> bool:
        """Counts the bytes compared and the outputs that differ; True when none does."""
        got, differ = self.outputs(workdir), []
        for name in sorted(set(got) | set(self.reference)):
            if got.get(name) != self.reference.get(name):
                differ.append(name)
            self.bytes_compared += len(self.reference.get(name, b""))
        if differ:
            self.mismatches += len(differ)
            self.unexpected.append(f"round {self.rounds} ({workdir} kept; its faults: "
                                   f"{'; '.join(self.events)}): {', '.join(differ[:3])} "
                                   f"and {max(0, len(differ) - 3)} more differ")
        return not differ

    # -- one attempt, with at most one fault during it -------------------------------------
    def note(self, kind: str, rc: int | str, log: str, ok: bool) -> None:
        self.outcomes[f"{kind}:{rc}"] += 1
        if not ok:
            self.unexpected.append(f"{kind}: exit {rc}: {last_line(read(log))}")

    def attempt(self, workdir: str, kind: str | None) -> int:
        """Runs the command once, injecting ``kind`` during it; 0 when the run completed."""
        limit = FILE_SIZE_LIMIT if kind == "full_disk" else None
        proc, log = self.runner.start(workdir, limit)
        if kind in ("kill9", "sigterm"):
            rc = self._signal_at_random(proc, kind)
        elif kind == "second_command":
            rc = self._second_command(proc, workdir)
        else:
            rc = finish(proc)
        text = read(log)
        self.resumes += "resumed at step" in text
        self.set_aside += text.count("is unreadable")
        if "Traceback (most recent call last)" in text:  # not one line: counted, kept in logs
            self.tracebacks[kind or "clean"] += 1
        expected = {None: {0}, "kill9": {0, -signal.SIGKILL}, "second_command": {0},
                    "sigterm": {0, PREEMPTED}, "full_disk": {0, 2}}[kind]
        ok = rc in expected
        if kind == "full_disk" and rc == 2:  # a checkpoint's one line, or a test-phase file's
            errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
            ok = len(errors) == 1 and ("cannot write checkpoint" in errors[0]
                                       or "File too large: '" in errors[0])
        if kind == "sigterm" and rc == PREEMPTED:  # at any moment: one line, the last
            lines = [ln for ln in re.split(r"[\r\n]", text) if ln.strip()]
            ok = bool(lines) and lines[-1].startswith("preempted") and \
                sum(ln.startswith("preempted") for ln in lines) == 1
            rc = f"{rc} in {self.phase(text)}"
        if kind is not None and rc != 0:
            self.injected[kind] += 1
        elif kind is not None and kind != "second_command":
            self.missed[kind] += 1  # the attempt ended before the fault's moment
        self.note(kind or "clean", rc, log, ok)
        self.events.append(f"{kind or 'clean'} -> {rc} ({os.path.basename(log)})")
        return 0 if rc == 0 else 1

    def phase(self, text: str) -> str:
        """Where an attempt's log ends: "startup", "training" or "test" (training done)."""
        done = "training complete: testing" in text  # cxrjax.train's line after the last stage
        return "test" if done else "training" if re.search(r"epoch \d+/", text) else "startup"

    def _signal_at_random(self, proc: subprocess.Popen, kind: str) -> int:
        """SIGKILL to the group, or SIGTERM to the run, at a seeded moment of the attempt."""
        try:
            latest = max(min(0.95 * self.horizon, self.latest_moment), 0.5)
            proc.wait(timeout=self.rng.uniform(0.5, latest))
            return finish(proc)
        except subprocess.TimeoutExpired:
            if kind == "kill9":
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                os.kill(proc.pid, signal.SIGTERM)
            return finish(proc)

    def _second_command(self, first: subprocess.Popen, workdir: str) -> int:
        """Once ``first`` holds the lock (and a seeded while later), the same command again: it
        must be refused in one line naming ``first``'s pid, exit 2. Then ``first`` ends."""
        while lock_pid(workdir) != first.pid and first.poll() is None:
            time.sleep(0.05)
        time.sleep(self.rng.uniform(0.0, self.reference_wall / 4))
        if first.poll() is not None:
            self.missed["second_command"] += 1
            return finish(first)
        second, log = self.runner.start(workdir)
        rc = finish(second)
        lines = [ln for ln in read(log).splitlines() if ln.strip()]
        held = first.poll() is None
        errors = [ln for ln in lines if ln.startswith("error:")]  # log lines (INFO) aside
        refused = (rc == 2 and len(errors) == 1 and f"in use by pid {first.pid}" in errors[0]
                   and not any(ln.startswith("Traceback") for ln in lines))
        if refused:
            self.refusals += 1
            self.injected["second_command"] += 1
            self.outcomes["second_command:refused"] += 1
        elif held or rc != 0:  # a second writer let in (or another failure) while the first ran
            self.injected["second_command"] += 1
            self.note("second_command", rc, log, False)
        else:
            self.missed["second_command"] += 1  # the first had ended before the second looked
        return finish(first)

    # -- the rounds ----------------------------------------------------------------------
    def draw(self, workdir: str) -> str | None:
        """The next fault kind from a seeded shuffled deck of all kinds (so every kind comes
        once per five faults), skipping a corrupt checkpoint while there is none; taken off
        the deck only once injected (``self.deck.remove``)."""
        if not self.deck:
            self.deck = self.rng.sample(KINDS, len(KINDS))
        has_checkpoint = latest_checkpoint(workdir) is not None
        return next((k for k in self.deck if k != "corrupt_checkpoint" or has_checkpoint), None)

    def run_round(self, faults: int) -> None:
        """A fresh workdir driven to a completed run through faults until ``faults`` in all have
        been injected (then clean attempts), and its outputs compared with the reference. A
        completed run may still get its latest checkpoint corrupted, and is then run again."""
        self.rounds += 1
        workdir = os.path.join(self.root, f"round_{self.rounds:03d}")
        shutil.rmtree(workdir, ignore_errors=True)
        first, completed, failures = True, False, 0
        self.events: list[str] = []  # this round's faults, for a mismatch's line
        while True:
            before = sum(self.injected.values())
            more = before < faults and time.monotonic() < self.deadline
            kind = self.draw(workdir) if more else None
            if kind == "corrupt_checkpoint":
                how = corrupt(latest_checkpoint(workdir), self.rng, self.corruptions)
                self.events.append(f"{how} of {os.path.basename(latest_checkpoint(workdir))}")
                self.injected[kind] += 1
                self.outcomes[f"{kind}:{how.split()[0]}"] += 1
                self.deck.remove(kind)
                completed = False
                continue  # the next attempt is the rerun
            if completed:
                break
            self.reruns += not first
            self.horizon = self.reference_wall if first else self.rerun_wall
            first, started = False, time.monotonic()
            completed = self.attempt(workdir, kind) == 0
            if completed and self.horizon != self.reference_wall:  # a rerun's usual length
                self.rerun_wall = 0.7 * self.rerun_wall + 0.3 * (time.monotonic() - started)
            if kind is not None and sum(self.injected.values()) > before:
                self.deck.remove(kind)
            failures += kind is None and not completed
            if failures >= 3:
                self.mismatches += 1
                self.unexpected.append(f"round {self.rounds}: three clean attempts failed")
                return
        if self.compare(workdir):
            shutil.rmtree(workdir, ignore_errors=True)

    def summary(self, faults: int, wall: float) -> dict:
        return {"faults_requested": faults, "faults_injected": sum(self.injected.values()),
                "faults_by_kind": dict(sorted(self.injected.items())),
                "faults_missed_by_kind": dict(sorted(self.missed.items())),
                "outcomes": dict(sorted(self.outcomes.items())), "rounds": self.rounds,
                "reruns": self.reruns, "resumes": self.resumes,
                "checkpoints_set_aside": self.set_aside, "refusals": self.refusals,
                "attempts_with_a_traceback": dict(sorted(self.tracebacks.items())),
                "bytes_compared": self.bytes_compared, "mismatches": self.mismatches,
                "unexpected": self.unexpected, "reference_wall_s": round(self.reference_wall, 1),
                "wall_s": round(wall, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=10, help="faults to inject in all")
    parser.add_argument("--seed", type=int, default=0, help="seeds the faults and moments")
    parser.add_argument("--workdir-root", default=None,
                        help="folder for the data, the runs and the logs (default: a temporary "
                             "one, removed at the end)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the tiny run")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="inject no new fault after this many seconds (the round going on "
                             "is finished and compared); the summary says how many fit")
    parser.add_argument("--corruptions", default=",".join(CORRUPTIONS),
                        help="how a checkpoint file is corrupted: truncate, flip, or both "
                             "(comma-separated)")
    parser.add_argument("--data-root", default=None,
                        help="folder of the tiny data set (nih/, tfds/): reused when prepared, "
                             "else made there (default: WORKDIR_ROOT/data)")
    parser.add_argument("--run-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the tiny run's config (repeatable), e.g. "
                             "eval.subgroups=False for a shorter run; the reference run and "
                             "every attempt get it")
    parser.add_argument("--latest-moment-s", type=float, default=None,
                        help="a kill or preemption comes at most this many seconds into its "
                             "attempt (default: 95%% of the attempt's expected length, which "
                             "the reference run's cold compilation can overstate)")
    parser.add_argument("--dump-arrays", nargs=2, metavar=("WORKDIR", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dump_arrays:
        dump_arrays(*args.dump_arrays)
        return 0
    if args.faults < 1 or args.epochs < 1:
        parser.error("--faults and --epochs must be at least 1")
    bad = [item for item in args.run_set if "=" not in item.strip("=")]
    if bad:
        parser.error(f"--run-set {bad[0]!r}: expected KEY=VALUE")
    if not set(args.corruptions.split(",")) <= set(CORRUPTIONS):
        parser.error(f"--corruptions: {args.corruptions!r} is not among {CORRUPTIONS}")
    started = time.monotonic()
    root = args.workdir_root or tempfile.mkdtemp(prefix="fault_campaign_")
    os.makedirs(root, exist_ok=True)
    try:
        campaign = Campaign(root, args.seed, args.epochs, tuple(args.corruptions.split(",")),
                            args.data_root, tuple(args.run_set))
        if args.latest_moment_s is not None:
            campaign.latest_moment = args.latest_moment_s
        if args.budget_s is not None:
            campaign.deadline = started + args.budget_s
        campaign.run_reference()
        while sum(campaign.injected.values()) < args.faults and \
                time.monotonic() < campaign.deadline:
            campaign.run_round(args.faults)
        print(json.dumps(campaign.summary(args.faults, time.monotonic() - started)), flush=True)
    finally:
        if args.workdir_root is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if not campaign.mismatches and not campaign.unexpected else 1


if __name__ == "__main__":
    sys.exit(main())
