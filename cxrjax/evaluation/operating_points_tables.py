"""The operating-point tables: per class threshold, test positives and each measure with its
95% CI, as markdown (the report's section) and as plain text (a terminal)."""

from __future__ import annotations

import numpy as np

MEASURES = ("sensitivity", "specificity", "ppv", "npv", "f1")

_RULE_TEXT = {
    "youden": "the threshold maximising Youden's J (sensitivity + specificity - 1)",
    "max_f1": "the threshold maximising F1",
    "sensitivity": "the highest threshold reaching a sensitivity of {target:g}",
}


def _interval(m: dict, digits: int = 3) -> str:
    value, low, high = (m.get(k) for k in ("value", "low", "high"))
    if value is None or not np.isfinite(value):
        return "n/a"
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _rows(result: dict) -> list[list[str]]:
    rows = []
    for name, r in result["per_class"].items():
        threshold = r.get("threshold")
        has = threshold is not None and np.isfinite(threshold)
        positives = (r.get("tp") or 0) + (r.get("fn") or 0) if has else None
        rows.append([name, f"{threshold:.4f}" if has else "n/a",
                     f"{positives:.0f}" if positives is not None else "n/a",
                     *(_interval(r[m]) if has else "n/a" for m in MEASURES)])
    return rows


_COLUMNS = ("Finding", "threshold", "test positives", "sensitivity", "specificity", "PPV",
            "NPV", "F1")


def markdown_table(result: dict) -> str:
    """Per class: threshold, test positives and each measure with its 95% CI, as markdown."""
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|---|" + "---:|" * (len(_COLUMNS) - 1)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in _rows(result)])


def format_text(result: dict) -> str:
    """The same table as plain text, for a terminal."""
    rows = [list(_COLUMNS), *_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = [("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths, strict=True)))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def describe(result: dict) -> str:
    """One sentence: how the thresholds were chosen and what the intervals are."""
    rule = _RULE_TEXT.get(result.get("rule"), f"rule {result.get('rule')!r}").format(
        target=result.get("target_sensitivity") or 0)
    chosen = result.get("chosen_on", "validation")
    where = (f" ({result['validation_images']} images)" if result.get("validation_images")
             else "")
    boot = result.get("n_boot") or 0
    ci = (f"95% CIs in brackets: percentile bootstrap over {boot} resamples of the "
          f"{result.get('test_images', '')} scored images" if boot else "no bootstrap CI")
    return (f"A finding is called positive when its probability is >= its class's threshold, "
            f"{rule} on the {chosen} split{where}; {ci}. A class with no positive or no "
            "negative image where the thresholds were chosen has none (n/a).")


def report_section(result: dict | None, heading: str = "##") -> str:
    """The report's operating-point section (markdown); says why when there is no result."""
    lines = [f"{heading} Operating points: when to call a finding positive", ""]
    if not result or "per_class" not in result:
        why = (result or {}).get("skipped", "not computed")
        return "\n".join(lines + [f"Not computed: {why}.", ""])
    return "\n".join(lines + [
        describe(result) + " Thresholds: `eval/thresholds.json` (`cxrjax.predict` marks its "
        "calls with them; `cxrjax.evaluate --predictions F --thresholds` applies them).", "",
        markdown_table(result), ""])
