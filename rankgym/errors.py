"""Errors a user can fix. Their messages say what is wrong and how to fix it, on one line;
the CLI prints them without a traceback."""


class RankgymError(Exception):
    """Base of every error the user can fix."""


class ConfigError(RankgymError, ValueError):
    """A bad option or keyword argument."""


class FileError(RankgymError, ValueError):
    """A file the user handed in cannot be read: the message names the file and the problem."""


class MapFailure(RankgymError):
    """A failure of the evaluated rank map itself (a diverged fine-tune, a map a table never recorded):
    stored and replayed as that map's result, never a reason to stop a search."""
