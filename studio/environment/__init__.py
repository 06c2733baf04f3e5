"""The Python environment Studio runs in: the committed lock, known-broken package combinations, and
``studio doctor``. Everything here except :mod:`studio.environment.device` is torch-free and cheap, so
every command can check the environment before it imports anything heavy."""
