"""Exceptions with messages that tell the user what to fix."""


class CrossModalRegError(ValueError):
    """Bad input or an impossible request. The message names the input and says what to fix.

    Raised *before* anything is written or added to a scene.
    """


class RegistrationCancelled(RuntimeError):
    """The user cancelled a run. Nothing the run created is left behind."""


class RegistrationFailed(RuntimeError):
    """The optimiser ran but the post-run sanity checks reject the result.

    ``report`` holds the failed checks (a list of strings) and ``result`` the rejected result, so a caller
    that knows better can still inspect it.
    """

    def __init__(self, message, report=None, result=None):
        super().__init__(message)
        self.report = list(report or [])
        self.result = result


class NoOverlapError(CrossModalRegError):
    """The two images do not overlap where the registration starts (bad geometry or initialisation).

    A kind of bad input (exit code 2), kept apart so that batch and the GUI can say "no overlap" without reading
    the message.
    """
