-- Run once by the postgres image on an empty volume (docker-entrypoint-initdb.d). The database
-- "airflow" is created by POSTGRES_DB; MLflow and the tuning studies get their own.
CREATE DATABASE mlflow OWNER airflow;
CREATE DATABASE optuna OWNER airflow;
