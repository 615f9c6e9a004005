"""triggers of airflow-ml-provider."""
