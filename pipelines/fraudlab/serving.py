"""The registered form of the TensorFlow fraud model: an MLflow pyfunc over
the saved Keras model, taking a DataFrame of the features by name (so the
model's signature lists the transaction's fields, which TensorFlow's own
MLflow flavours cannot do) and returning the fraud probability."""

import mlflow.pyfunc

from .features import FEATURES


class KerasFraudModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import keras

        self.model = keras.saving.load_model(context.artifacts["keras_model"], compile=False)

    def predict(self, context, model_input, params=None):
        values = model_input[FEATURES].to_numpy(dtype="float32")
        return self.model.predict(values, batch_size=4096, verbose=0).ravel()
