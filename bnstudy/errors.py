"""The one exception type that means "the user asked for something impossible", and how a
message stays on one line.

The CLI turns it into a single line `bnstudy: error: <message>` and exit status 2;
every other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A bad flag, spec, dataset or output location, described in one line."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, as SIGINT raises KeyboardInterrupt: a sweep
    stops its workers and keeps its finished runs either way (cli.main)."""


def printable(text: str) -> str:
    """`text` with each character that is not printable (a newline, an escape, a NUL, ...)
    written as Python writes it in a string literal (\\n, \\x1b, \\x00, \\u2028), the rest as
    it is: so that a path or value holding one cannot split or garble a line."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
