"""The run folder: who may write in it (``ownership``, ``lock``) and reading a run back
(``loading``); every file name it holds is ``cxrjax.io.run_layout``'s."""
