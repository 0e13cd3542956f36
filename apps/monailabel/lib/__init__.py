"""Tasks of the MASS MONAI Label app (see ``main.py``)."""
