"""How bad input is refused: the error types (``errors``), the option and file checks run before heavy work
(``options``), and the wrapper that turns an error into one line and an exit status (``cli``)."""
