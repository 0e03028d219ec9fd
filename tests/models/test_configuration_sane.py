"""Tests of `SaneConfig`: defaults, validation, serialization."""

import json

import pytest

from sane_hf.models.sane import SaneConfig


TINY = {
    "token_size": 12,
    "d_model": 32,
    "n_heads": 4,
    "n_layers": 2,
    "latent_dim": 8,
    "window_size": 16,
    "max_positions": [64, 8, 16],
}


def test_defaults():
    config = SaneConfig()
    assert config.model_type == "sane"
    assert config.token_size == 289
    assert config.d_model == 256
    assert config.n_heads == 8
    assert config.n_layers == 4
    assert config.n_decoder_layers == 4  # None -> n_layers
    assert config.latent_dim == 128
    assert config.max_positions == [55000, 100, 550]
    assert config.window_size == 256
    assert config.halo_size == 64  # None -> window_size // 4
    assert config.content_size == 128
    assert config.dropout == 0.0
    assert config.projection_dim == 30
    assert config.projection_pooling == "flatten"
    assert config.bias is False
    assert config.layer_norm_eps == 1e-5
    assert config.initializer_range == 0.02
    assert config.gamma == 0.05
    assert config.temperature == 0.1


def test_explicit_derived_fields():
    config = SaneConfig(**TINY, n_decoder_layers=3, halo_size=0)
    assert config.n_decoder_layers == 3
    assert config.halo_size == 0
    assert config.content_size == 16
    assert SaneConfig(**TINY).halo_size == 4
    # A tuple is stored as a list, so that the JSON round trip gives back an equal config.
    assert SaneConfig(**{**TINY, "max_positions": (64, 8, 16)}).max_positions == [64, 8, 16]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"token_size": 0}, r"`token_size` must be a positive int, got 0"),
        ({"d_model": 30.0}, r"`d_model` must be a positive int, got 30\.0"),
        ({"n_heads": -1}, r"`n_heads` must be a positive int"),
        ({"n_layers": True}, r"`n_layers` must be a positive int, got True"),
        ({"n_decoder_layers": 0}, r"`n_decoder_layers` must be a positive int"),
        ({"latent_dim": None}, r"`latent_dim` must be a positive int, got None"),
        ({"window_size": 0}, r"`window_size` must be a positive int"),
        ({"projection_dim": 0}, r"`projection_dim` must be a positive int"),
        ({"d_model": 30}, r"`d_model` must be divisible by `n_heads`, got d_model=30 and n_heads=4"),
        ({"d_model": 9, "n_heads": 3}, r"`d_model` must be even .* got d_model=9"),
        ({"max_positions": [64, 8]}, r"`max_positions` must be a list of 3 positive ints.*\[64, 8\]"),
        ({"max_positions": 64}, r"`max_positions` must be a list of 3"),
        ({"max_positions": [64, 0, 16]}, r"`max_positions\[1\]` must be a positive int, got 0"),
        (
            {"window_size": 65},
            r"`window_size` must be <= `max_positions\[0\]`.*window_size=65 and max_positions\[0\]=64",
        ),
        ({"halo_size": -1}, r"`halo_size` must be an int >= 0.*got -1"),
        ({"halo_size": 1.5}, r"`halo_size` must be an int >= 0.*got 1\.5"),
        ({"halo_size": 8}, r"`halo_size` leaves no content.*window_size=16 and halo_size=8"),
        ({"dropout": 1.0}, r"`dropout` must be a float in \[0, 1\), got 1\.0"),
        ({"dropout": -0.1}, r"`dropout` must be a float in \[0, 1\)"),
        ({"projection_pooling": "max"}, r"`projection_pooling` must be one of \['flatten', 'mean'\], got 'max'"),
        ({"bias": "yes"}, r"`bias` must be a bool, got 'yes'"),
        ({"layer_norm_eps": 0.0}, r"`layer_norm_eps` must be a float > 0"),
        ({"initializer_range": -0.02}, r"`initializer_range` must be a float >= 0"),
        ({"gamma": 1.5}, r"`gamma` must be a float in \[0, 1\], got 1\.5"),
        ({"temperature": 0.0}, r"`temperature` must be a float > 0, got 0\.0"),
    ],
)
def test_validation_errors_name_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        SaneConfig(**{**TINY, **overrides})


def test_boundary_values_are_accepted():
    SaneConfig(**{**TINY, "halo_size": 7, "dropout": 0.0, "gamma": 0.0})  # content window of 2 tokens
    SaneConfig(**{**TINY, "window_size": 64, "gamma": 1.0})  # window == max_positions[0]


def test_equality_compares_sane_fields():
    # transformers 5 makes config subclasses dataclasses; the generated __eq__ would ignore SANE's own fields.
    assert SaneConfig(**TINY) == SaneConfig(**TINY)
    assert SaneConfig(**TINY) != SaneConfig(**{**TINY, "d_model": 64})


def test_to_dict_from_dict_round_trip():
    config = SaneConfig(**TINY, dropout=0.1, projection_pooling="mean", bias=True, gamma=0.2, temperature=0.3)
    as_dict = config.to_dict()
    assert as_dict["model_type"] == "sane"
    assert as_dict["temperature"] == 0.3
    restored = SaneConfig.from_dict(as_dict)
    assert restored.to_dict() == as_dict
    assert json.loads(config.to_json_string()) == json.loads(restored.to_json_string())


def test_save_pretrained_from_pretrained_round_trip(tmp_path):
    config = SaneConfig(**TINY, n_decoder_layers=3, halo_size=2, temperature=0.5)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    # `temperature` is a generation-parameter name in transformers; it must survive save and load anyway.
    assert saved["temperature"] == 0.5
    assert saved["auto_map"] == {"AutoConfig": "configuration_sane.SaneConfig"}
    assert (tmp_path / "configuration_sane.py").is_file()
    restored = SaneConfig.from_pretrained(tmp_path)
    for key in (*TINY, "n_decoder_layers", "halo_size", "temperature", "gamma", "projection_pooling"):
        assert getattr(restored, key) == getattr(config, key), key


def test_unknown_kwargs_are_tolerated_and_serialized():
    config = SaneConfig(**TINY, my_extra_field="kept", architectures=["SaneModel"])
    assert config.my_extra_field == "kept"
    restored = SaneConfig.from_dict(config.to_dict())
    assert restored.my_extra_field == "kept"
    assert restored.architectures == ["SaneModel"]
