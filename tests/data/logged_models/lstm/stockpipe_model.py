"""stockpipe's model for MLflow pyfunc: loads the model's data with the installed stockpipe package."""
from mlflow.models import set_model

from pipeline.served_model import ServedModel

set_model(ServedModel())
