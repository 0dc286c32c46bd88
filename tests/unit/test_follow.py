"""Following a batch: which failed polls are waited out (the database away), and what its
progress title counts."""

import psycopg
from sqlalchemy.exc import OperationalError

from actors.restart import database_away
from wtb_ray.domain.errors import NotFound


class Remote(Exception):
    """Stands for ray.exceptions.RayTaskError: the remote exception is its ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def test_a_database_that_does_not_answer_is_waited_out_anything_else_is_not():
    refused = OperationalError("SELECT 1", {}, psycopg.OperationalError("connection refused"))
    assert database_away(Remote(refused)) and database_away(refused)
    assert not database_away(Remote(NotFound("batch", "nope")))
    assert not database_away(Remote(ValueError("bad spec")))


def test_the_progress_title_counts_the_cells_its_rows_show():
    from rich.console import Console

    from wtb_ray.cli.batch_view import progress_table

    batch = {"id": "b1", "name": "m", "status": "running", "total": 40, "completed": 4,
             "failed": 0, "cancelled": 0}  # the driver's last saved counts, behind the cells
    combos = {'{"a":"x"}': {"completed": 5, "failed": 1, "running": 2},
              '{"a":"y"}': {"completed": 1, "retrying": 1, "pending": 30}}
    console = Console(record=True, width=120)
    console.print(progress_table({"batch": batch, "combinations": combos}))
    text = console.export_text()
    assert "7/40 cells" in text and "a=x" in text and "retrying" in text
