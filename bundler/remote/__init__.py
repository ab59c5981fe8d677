"""`bundler push / status / submit / baseline`: the round trip with Kaggle, through the kaggle package.

Every call goes through `bundler.remote.client` (the one importer of `kaggle`); what bundler
remembers between commands is `build/kaggle/state.json` (`bundler.remote.state`).
"""

from bundler.remote.baseline import CaptureResult, DiffResult, capture, diff
from bundler.remote.kernel import StatusResult, kernel_status
from bundler.remote.push import PushResult, push
from bundler.remote.submit import SubmitResult, submit

__all__ = [
    "CaptureResult",
    "DiffResult",
    "PushResult",
    "StatusResult",
    "SubmitResult",
    "capture",
    "diff",
    "kernel_status",
    "push",
    "submit",
]
