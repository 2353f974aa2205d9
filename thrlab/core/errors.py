"""Expected failures: bad config, bad data, missing files, an unusable run folder or machine.

Each is one ThrlabError whose message names the problem and the fix; the CLI prints it as one
line (`thrlab: error: ...`, exit status 2) and shows the traceback only with --debug or
THRLAB_DEBUG=1. Anything else is a bug and keeps its traceback. The ValueError/TypeError bases
keep `except ValueError` in callers working. No imports: config and runs load without torch.
"""


class ThrlabError(Exception):
    """An expected failure whose message says what is wrong and how to proceed."""


class ConfigError(ThrlabError, ValueError):
    """A config key, value, preset or method name is wrong."""


class ConfigTypeError(ConfigError, TypeError):
    """A config value has the wrong type."""


class DataError(ThrlabError, ValueError):
    """A task or eval set cannot be read: missing, empty, malformed, or offline."""


class RunFolderError(ThrlabError):
    """A run folder cannot be used: another config, another process, not a folder, bad state."""


class SetupError(ThrlabError):
    """The machine cannot run the config: no CUDA, a model or adapter that cannot be loaded."""
