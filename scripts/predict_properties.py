"""Predict model properties (test accuracy, epoch, generalization gap, ...) from SANE embeddings, with baselines.

python scripts/predict_properties.py --model runs/sane --dataset runs/zoo_ds --output_dir runs/predict
python scripts/predict_properties.py --config scripts/configs/predict_digits_cnn.yaml --finetune_epochs 10
"""

from sane_hf.cli import main_predict


if __name__ == "__main__":
    main_predict()
