"""User-facing errors: each one is printed as a single line by the CLI, never as a traceback."""


class HarnessError(Exception):
    """Bad input or an unusable environment. The message is one line that names the problem."""


class SpecError(HarnessError):
    """A variant or trial spec that cannot be run (unknown seq, hidden size <= 0, ...)."""


class DataError(HarnessError):
    """The dataset is missing, corrupt, unofficial without permission, or hostile."""


class DeviceError(HarnessError):
    """The requested device does not exist here (e.g. --device cuda without CUDA)."""


class SuiteError(HarnessError):
    """A suite file that does not validate; the message names the file, key path and problem."""
