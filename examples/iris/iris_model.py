"""A real classifier: logistic regression on the iris data set that scikit-learn ships (no download).

`load()` trains once when the runtime starts (about a second); `predict()` answers the class name and the
probability of every class for one flower, measured in centimetres.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")


@dataclass(frozen=True)
class IrisModel:
    pipeline: Pipeline
    classes: tuple[str, ...]
    training_accuracy: float


def load() -> IrisModel:
    data = load_iris()
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    pipeline.fit(data.data, data.target)
    accuracy = float(pipeline.score(data.data, data.target))
    return IrisModel(
        pipeline=pipeline, classes=tuple(str(name) for name in data.target_names), training_accuracy=accuracy
    )


def predict(
    model: IrisModel, sepal_length: float, sepal_width: float, petal_length: float, petal_width: float
) -> dict[str, Any]:
    row = np.array([[sepal_length, sepal_width, petal_length, petal_width]], dtype=float)
    if not np.isfinite(row).all() or (row <= 0).any():
        raise ValueError(f"measurements must be positive numbers of centimetres, got {row[0].tolist()}")
    probabilities = model.pipeline.predict_proba(row)[0]
    best = int(np.argmax(probabilities))
    return {
        "class": model.classes[best],
        "probabilities": {name: round(float(p), 6) for name, p in zip(model.classes, probabilities, strict=True)},
    }
