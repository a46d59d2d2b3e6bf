"""The prepared Parquet format: round trips, validation on read, and the cdlm-data CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cdlm_dist.cli.data import main
from cdlm_dist.config import ConfigError, DataConfig
from cdlm_dist.data import load_domain
from cdlm_dist.data.domains import DomainData, Split
from cdlm_dist.data.parquet import METADATA_KEY, prepared_file_name, read_prepared, write_prepared

SIZE, CHANNELS, CLASSES = 12, 3, 4


def _domain(name: str = "toy", n_train: int = 10, n_test: int = 6) -> DomainData:
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        images = torch.randint(0, 256, (n, CHANNELS, SIZE, SIZE), generator=g, dtype=torch.uint8)
        return Split(images, torch.arange(n) % CLASSES)

    return DomainData(name=name, train=split(n_train), test=split(n_test), num_classes=CLASSES)


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, DomainData]:
    domain = _domain()
    return write_prepared(domain, tmp_path / "toy.parquet"), domain


def test_round_trip_is_exact(prepared):
    path, domain = prepared
    raw = read_prepared(path)
    assert raw.num_classes == CLASSES
    for split in ("train", "test"):
        assert torch.equal(getattr(raw, split).images, getattr(domain, split).images)
        assert torch.equal(getattr(raw, split).labels, getattr(domain, split).labels)
    assert not (path.parent / "toy.parquet.partial").exists()


def test_file_metadata_and_columns(prepared):
    path, _ = prepared
    schema = pq.read_schema(path)
    assert schema.names == ["image", "label", "domain", "split"]
    meta = json.loads(schema.metadata[METADATA_KEY])
    assert meta == {"format_version": 1, "image_size": SIZE, "channels": CHANNELS,
                    "num_classes": CLASSES, "domain": "toy", "rows": {"train": 10, "test": 6}}
    table = pq.read_table(path)
    assert set(table.column("split").to_pylist()) == {"train", "test"}
    assert set(table.column("domain").to_pylist()) == {"toy"}


def test_parquet_family_loads_relative_to_root_and_absolute(prepared):
    path, domain = prepared
    cfg = DataConfig(root=str(path.parent), image_size=SIZE, channels=CHANNELS)
    relative = load_domain(f"parquet:{path.name}", cfg, labelled=False)
    absolute = load_domain(f"parquet:{path}", DataConfig(image_size=SIZE, channels=CHANNELS),
                           labelled=False)
    assert torch.equal(relative.train.images, domain.train.images)
    assert torch.equal(absolute.test.labels, domain.test.labels)
    grey = load_domain(f"parquet:{path}", DataConfig(image_size=8, channels=1), labelled=False)
    assert grey.train.images.shape == (10, 1, 8, 8)  # converted on load like any domain


def test_file_names_are_safe_for_family_domains():
    assert prepared_file_name("imagefolder:office31/amazon") == "imagefolder_office31_amazon.parquet"


# --- validation on read -------------------------------------------------------------------------

def _rewrite(src: Path, dst: Path, table_fn=None, **meta_changes) -> Path:
    """Copy a prepared file, changing its table and/or metadata fields (None deletes a field)."""
    table = pq.read_table(src)
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    for key, value in meta_changes.items():
        if value is None:
            del meta[key]
        else:
            meta[key] = value
    table = table_fn(table) if table_fn else table
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(meta)}), dst)
    return dst


def _with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


CORRUPTIONS = {
    "wrong columns": (lambda t: t.rename_columns(["img", "label", "domain", "split"]), {},
                      "columns"),
    "label type": (lambda t: _with_column(t, "label", t.column("label").cast(pa.int32())), {},
                   "columns"),
    "image size vs metadata": (None, {"image_size": SIZE - 4}, "means 192 bytes"),
    "channels vs metadata": (None, {"channels": 1}, "-byte image"),
    "label range": (None, {"num_classes": 2}, "labels span [0, 3]"),
    "row counts": (None, {"rows": {"train": 11, "test": 6}}, "metadata says 11"),
    "version": (None, {"format_version": 99}, "format version 99"),
    "missing field": (None, {"num_classes": None}, "lacks fields"),
    "bad channels": (None, {"channels": 2}, "channels=2"),
    "domain column": (None, {"domain": "other"}, "domain column holds"),
    "unknown split": (lambda t: _with_column(t, "split", pa.array(["val"] * t.num_rows)), {},
                      "split values"),
    "null label": (lambda t: _with_column(t, "label", pa.array([None] * t.num_rows, pa.int64())),
                   {}, "nulls"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_mismatched_file_names_file_and_problem(prepared, tmp_path, case):
    table_fn, meta_changes, problem = CORRUPTIONS[case]
    bad = _rewrite(prepared[0], tmp_path / "bad.parquet", table_fn, **meta_changes)
    with pytest.raises(ConfigError, match=re.escape(str(bad)) + ".*" + re.escape(problem)):
        read_prepared(bad)


def test_file_without_metadata_is_not_a_prepared_file(prepared, tmp_path):
    bad = tmp_path / "plain.parquet"
    pq.write_table(pq.read_table(prepared[0]).replace_schema_metadata(None), bad)
    with pytest.raises(ConfigError, match="not a prepared domain file"):
        read_prepared(bad)


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_file_names_the_file(prepared, tmp_path, keep):
    data = prepared[0].read_bytes()
    bad = tmp_path / "cut.parquet"
    bad.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(ConfigError, match=re.escape(str(bad)) + ".*corrupt"):
        read_prepared(bad)


def test_missing_file_says_how_to_create_it(tmp_path):
    with pytest.raises(ConfigError, match="cdlm-data prepare"):
        read_prepared(tmp_path / "absent.parquet")


# --- the CLI ------------------------------------------------------------------------------------

def test_cli_prepare_writes_one_loadable_file_per_domain(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["prepare", "data=mnist5k_to_ucidigits", "--out", str(out),
                 "data.max_train_per_domain=40", "data.max_test_per_domain=20"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["mnist5k.parquet", "ucidigits.parquet"]
    assert "parquet:" in capsys.readouterr().out
    uci = read_prepared(out / "ucidigits.parquet")
    assert uci.train.images.shape == (40, 1, 28, 28) and len(uci.test) == 20
    cfg = DataConfig(root=str(out))
    direct = load_domain("ucidigits", DataConfig(max_train_per_domain=40, max_test_per_domain=20),
                         labelled=False)
    assert torch.equal(load_domain("parquet:ucidigits.parquet", cfg, False).test.images,
                       direct.test.images)


def test_cli_prepare_reports_config_errors(tmp_path, capsys):
    assert main(["prepare", "data=no_such_preset", "--out", str(tmp_path)]) == 2
    assert "no_such_preset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prepare", "data=mnist5k_to_ucidigits"])  # --out is required


def test_cli_list_prints_domains_and_presets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("mnist5k", "usps", "imagefolder:<arg>", "parquet:<arg>", "digits3",
                 "office31_amazon_to_webcam", "mnist_to_usps"):
        assert name in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    # domains at their native size, presets at the size they convert every domain to
    assert "RGB 32 x 32" in lines["mnistm"] and "28 x 28" in lines["mnistm_synth"]
    assert "28 px RGB" in lines["mnist_to_mnistm"] and "32 px RGB" in lines["svhn_to_mnist"]
