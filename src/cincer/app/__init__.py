"""The annotation web app: a person cleans labels with the suspicious example and its counter-example
side by side. ``Store`` (SQLite) holds every decision, ``Session`` runs CINCER's round over a
``Project`` folder, and ``create_app`` is the FastAPI layer (``cincer serve``)."""

from .export import write_export
from .project import Project, SessionConfig, create_demo, init_project, load_project
from .session import Session
from .store import Store

__all__ = ["Project", "Session", "SessionConfig", "Store", "create_demo",
           "init_project", "load_project", "write_export"]
