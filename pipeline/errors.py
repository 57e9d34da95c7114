"""The pipeline's error types.

Every failure a caller can act on is one of these, with a stable machine ``code`` and a message that names
the file, field or tensor at fault. The CLI prints the message (no traceback) and the server maps the code to
an HTTP status or a failed job, so nothing here may leak internals beyond the user's own inputs.
"""


class PipelineError(Exception):
    """Base class: a failure with a stable machine-readable code."""

    code = "pipeline_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputError(PipelineError):
    """The caller's input cannot be used (bad argument, unreadable media)."""

    code = "invalid_input"


class ImageError(InputError):
    code = "invalid_image"


class AudioError(InputError):
    code = "invalid_audio"


class VideoError(InputError):
    code = "invalid_video"


class SizeError(InputError):
    code = "invalid_size"


class WeightsError(PipelineError):
    """Model weights are missing, unreadable or do not match the architecture."""

    code = "weights_error"
