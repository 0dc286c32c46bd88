"""Domain model: workflow graphs, executions, checkpoints, events and errors. No I/O here."""
