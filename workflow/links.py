"""Links on every task of the daily DAG to the day's pages: the HAP daily report and the validation's
Great Expectations Data Docs (the buttons on a task instance's page in the Airflow UI).

Airflow 3 computes a link in the worker when the task ends and keeps it as an XCom, so the UI shows
it without importing this module. The pages live under ``$HAP_HOME``; ``orchestration.pages_url``
names where they are published over HTTP, else the links are ``file://`` paths (one machine: a
browser opens them from a copied address, not from the UI's http page).
"""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import BaseOperatorLink

from hap.config import HapConfig
from hap.workspace import Workspace

DATA_DOCS = "gx/uncommitted/data_docs/local_site/index.html"


def _ds(ti_key: Any) -> str:
    """The task's logical day: from its context in the worker, else the task's environment."""
    try:
        return str(ti_key.get_template_context()["ds"])
    except Exception:  # noqa: BLE001 - a key without a context (e.g. outside a worker)
        return os.environ.get("AIRFLOW_CTX_LOGICAL_DATE", "")[:10]


def page_url(relative: str) -> str:
    """``relative`` (a path under ``$HAP_HOME``) as the link on-call follows."""
    base = HapConfig.from_env().orchestration.pages_url.rstrip("/")
    return f"{base}/{relative}" if base else (Workspace.from_env().root / relative).as_uri()


def report_url(ds: str) -> str:
    return page_url(f"reports/ds={ds}/index.html")


def data_docs_url(ds: str) -> str:
    return page_url(f"validation/ds={ds}/{DATA_DOCS}")


class ReportLink(BaseOperatorLink):
    """The day's HAP report (built by the run's last task)."""

    name = "HAP daily report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return report_url(_ds(ti_key))


class DataDocsLink(BaseOperatorLink):
    """The day's validation in Great Expectations' Data Docs."""

    name = "Data Docs (validation)"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return data_docs_url(_ds(ti_key))


LINKS = (ReportLink(), DataDocsLink())
