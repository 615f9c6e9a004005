"""plugins of airflow-ml-provider."""
