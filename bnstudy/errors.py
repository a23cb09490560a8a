"""The one exception type that means "the user asked for something impossible".

The CLI turns it into a single line `bnstudy: error: <message>` and exit status 2;
every other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A bad flag, spec, dataset or output location, described in one line."""
