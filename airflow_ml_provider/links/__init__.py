"""links of airflow-ml-provider."""
