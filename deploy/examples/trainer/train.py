#!/usr/bin/env python3
"""An example training program written for SageMaker's container contract, nothing Trainyard-specific.

Trains logistic regression with mini-batch SGD (optionally with momentum and L2) on the CSV files of
the `train` channel (label first), evaluates on `validation` every epoch, and prints metrics that the
job's MetricDefinitions pick up:

    epoch=3 train_loss=0.4121 validation_accuracy=0.8650

The model is written to SM_MODEL_DIR (/opt/ml/model); a failure reason to /opt/ml/output/failure.
On SIGTERM it saves what it has and exits, as SageMaker asks of training code.
Standard library only, so it runs wherever Python 3 does.
"""
import csv
import glob
import json
import math
import os
import random
import signal
import sys
import time

BASE = os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")
MODEL_DIR = os.environ.get("SM_MODEL_DIR", os.path.join(BASE, "model"))
OUTPUT_DIR = os.environ.get("SM_OUTPUT_DIR", os.path.join(BASE, "output"))
CONFIG_DIR = os.environ.get("SM_INPUT_CONFIG_DIR", os.path.join(BASE, "input", "config"))

stop_requested = False


def on_sigterm(signum, frame):
    global stop_requested
    stop_requested = True


def channel(name):
    return os.environ.get(f"SM_CHANNEL_{name.upper()}", os.path.join(BASE, "input", "data", name))


def load(name):
    rows = []
    for path in sorted(glob.glob(os.path.join(channel(name), "**", "*.csv"), recursive=True)):
        with open(path) as f:
            for record in csv.reader(f):
                if record:
                    rows.append((float(record[0]), [float(x) for x in record[1:]]))
    if not rows:
        raise ValueError(f"channel {name!r} has no CSV rows in {channel(name)}")
    return rows


def predict(w, b, x):
    z = b + sum(wi * xi for wi, xi in zip(w, x))
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


def save(w, b, hp, epoch):
    os.makedirs(MODEL_DIR, exist_ok=True)
    with open(os.path.join(MODEL_DIR, "model.json"), "w") as f:
        json.dump({"weights": w, "bias": b, "hyperparameters": hp, "epochs_trained": epoch}, f, indent=2)


def main():
    signal.signal(signal.SIGTERM, on_sigterm)
    with open(os.path.join(CONFIG_DIR, "hyperparameters.json")) as f:
        hp = json.load(f)  # every value is a string, as SageMaker passes them
    lr = float(hp.get("learning_rate", "0.1"))
    l2 = float(hp.get("l2", "0.0"))
    epochs = int(hp.get("epochs", "10"))
    batch = int(hp.get("batch_size", "32"))
    momentum = 0.9 if hp.get("optimizer", "sgd") == "momentum" else 0.0
    delay = float(hp.get("epoch_seconds", "0"))  # lets tests and demos make epochs take time
    if lr <= 0:
        raise ValueError(f"learning_rate must be positive, got {lr}")

    train, validation = load("train"), load("validation")
    rng = random.Random(int(hp.get("seed", "0")))
    dims = len(train[0][1])
    w, b = [0.0] * dims, 0.0
    vw, vb = [0.0] * dims, 0.0
    print(f"training on {len(train)} rows, validating on {len(validation)}, {dims} features", flush=True)
    for epoch in range(1, epochs + 1):
        rng.shuffle(train)
        loss = 0.0
        for start in range(0, len(train), batch):
            chunk = train[start:start + batch]
            gw, gb = [l2 * wi for wi in w], 0.0
            for y, x in chunk:
                p = predict(w, b, x)
                loss -= y * math.log(p + 1e-12) + (1 - y) * math.log(1 - p + 1e-12)
                for i in range(dims):
                    gw[i] += (p - y) * x[i] / len(chunk)
                gb += (p - y) / len(chunk)
            vw = [momentum * v - lr * g for v, g in zip(vw, gw)]
            vb = momentum * vb - lr * gb
            w = [wi + v for wi, v in zip(w, vw)]
            b += vb
        correct = sum(1 for y, x in validation if (predict(w, b, x) >= 0.5) == (y >= 0.5))
        print(f"epoch={epoch} train_loss={loss / len(train):.4f} validation_accuracy={correct / len(validation):.4f}", flush=True)
        if delay:
            time.sleep(delay)
        if stop_requested:
            print("SIGTERM received: saving the model and stopping", flush=True)
            break
    save(w, b, hp, epoch)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] != "train":
        sys.exit(f"usage: {sys.argv[0]} train")
    try:
        main()
    except Exception as e:  # SageMaker's convention: the reason goes to /opt/ml/output/failure
        os.makedirs(OUTPUT_DIR, exist_ok=True)
        with open(os.path.join(OUTPUT_DIR, "failure"), "w") as f:
            f.write(f"{type(e).__name__}: {e}")
        print(f"training failed: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
