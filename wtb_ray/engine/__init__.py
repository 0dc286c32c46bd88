"""Runs executions node by node; pause, resume, rollback, fork; variants."""
