"""The one exception type for bad user input.

The command line turns an `InputError` into one line on stderr and exit status 2, with no traceback.
Its message must name the file or video at fault and the problem, e.g.
"features/video_1.npy: contains NaN or Inf".
"""


class InputError(Exception):
    """Bad input from the user (data, config, arguments). The message is shown as is."""
