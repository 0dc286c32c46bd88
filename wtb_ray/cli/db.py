"""`wtb db upgrade`."""

from __future__ import annotations

import json

from wtb_ray.cli.common import DbOpt, JsonOpt, db_app, guarded, out
from wtb_ray.config import Settings
from wtb_ray.domain.errors import InvalidInput, WTBError


@db_app.command("upgrade")
@guarded
def db_upgrade(json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Apply schema migrations (automatic for the embedded SQLite database)."""
    from wtb_ray.storage import db as dbmod
    from wtb_ray.storage import migrate

    url = Settings().with_database(db).url
    engine = dbmod.make_engine(url)
    try:
        before = migrate.current_revision(engine)
        after = migrate.upgrade(engine)
    except WTBError:
        raise
    except Exception as exc:
        raise InvalidInput(f"cannot upgrade {engine.url!r}: {type(exc).__name__}: {exc}") from None
    finally:
        engine.dispose()
    if json_out:
        print(json.dumps({"database": engine.url.render_as_string(hide_password=True),
                          "from": before, "to": after}))
    else:
        out.print(f"database at revision {after} (was {before or 'empty'})", highlight=False)


