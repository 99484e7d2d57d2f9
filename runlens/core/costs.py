"""The names of runlens's own cost operations, shared by the ledger that records them and the analysis that
judges them (``runlens.collect.cost`` documents each operation)."""

ONE_OFF_OPERATIONS = frozenset({"start", "close"})   # one-off set-up and tear-down: recorded, left out of the budget
THREAD_PREFIX = "runlens-"                           # runlens's background threads are named so
USER_PREFIX = "user:"                                # the user's own monitoring work, ``mon.cost(name)``
