"""
An auth manager for the UI tests: Airflow's simple auth manager, except that the user ``outsider``
may not read the DAG ``continuous_training`` (every other DAG, as a viewer).

The simple auth manager grants by role only, for every DAG; a real deployment's auth manager (FAB,
Keycloak, ...) grants per DAG. This one lets the tests see the plugin ask the auth manager about
the very DAG of the request. The api-server loads it with ``[core] auth_manager =
lineage_auth.OutsiderAuthManager`` and this folder on PYTHONPATH.
"""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

HIDDEN_DAG = "continuous_training"
OUTSIDER = "outsider"


class OutsiderAuthManager(SimpleAuthManager):
    def is_authorized_dag(
        self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None
    ) -> bool:
        if user.get_name() == OUTSIDER and details is not None and details.id == HIDDEN_DAG:
            return False
        return super().is_authorized_dag(
            method=method, user=user, access_entity=access_entity, details=details
        )
