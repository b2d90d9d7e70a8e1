"""User-facing errors: one line naming the file, the layer and what is wrong.

The command-line tools turn every ``RistrettoError`` into that line on stderr and exit code 2.
"""


class RistrettoError(Exception):
    """An error in the user's input (a file, a flag, a model), reported as one line."""

    def __init__(self, message, *, path=None, layer=None):
        super().__init__(message)
        self.message = message
        self.path = None if path is None else str(path)
        self.layer = layer

    def with_context(self, *, path=None, layer=None):
        """Fill in the file or layer where the caller knows it and the raiser did not."""
        if self.path is None and path is not None:
            self.path = str(path)
        if self.layer is None and layer is not None:
            self.layer = layer
        return self

    def __str__(self):
        parts = []
        if self.path:
            parts.append(self.path)
        if self.layer:
            parts.append(f"layer '{self.layer}'")
        parts.append(" ".join(str(self.message).split()))
        return ": ".join(parts)


class FormatError(RistrettoError):
    """A file that is not what it claims to be: malformed prototxt, truncated caffemodel, ..."""


class NetError(RistrettoError):
    """A net that is well-formed but cannot be built or run: missing bottom, bad shape, ..."""


class UnsupportedError(RistrettoError):
    """Something valid in Caffe that this tool does not handle (an unknown layer type, ...)."""


class ResourceError(RistrettoError):
    """Work that would need more memory (or other resources) than the machine allows."""


class RistrettoWarning(UserWarning):
    """Something the user should know that does not stop the work (weights the prototxt
    ignores, a flag that changes nothing, ...). The tools print it as one ``warning:`` line."""
