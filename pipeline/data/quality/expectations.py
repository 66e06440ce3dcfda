"""The Great Expectations suites over the annotation tables of the validate stage.

``table_frame`` turns a split's CSV (every cell as text) into the frame GX validates: the
contract columns with blank cells as nulls, each coordinate parsed (``x_min_value``...), the
positive box extents (``box_width``, ``box_height``) and the original ``row`` number, which
GX returns for every failing row (COMPLETE result format, ``unexpected_index_column_names``).

The suites are lists of ``Rule``: a GX expectation plus the named check of the validate
stage it feeds. ``annotation_rules`` needs only the params; ``class_rules`` needs the class
list, which for ``data.classes: auto`` comes from the train rows that passed everything else,
so it runs second. Rules marked ``warn`` are reported but quarantine nothing (GX severity
"warning"): repeated rows are the dedup stage's job, which keeps the first copy.

``SuiteRunner`` holds one ephemeral GX context (nothing written to disk but the Data Docs),
runs each suite on one batch per split and builds the Data Docs HTML. GX is imported only
there: the import costs 5-7 s.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from pipeline.core.config import ValidateParams
from pipeline.core.files import replaced_dir
from pipeline.data.contract import ANNOTATION_COLUMNS, BOX_COLUMNS

# A coordinate as text: a plain decimal number, optionally signed, with exponent and spaces.
# NaN, infinities and "1_000" are not numbers here (Python's float() would accept them).
NUMBER_PATTERN = r"^\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*$"
# An image_id or folder that is not one plain path component.
UNSAFE_NAME_PATTERN = r"[/\\\x00]|^\.{1,2}$"
EXTENTS = {"box_width": ("x_min", "x_max"), "box_height": ("y_min", "y_max")}
INDEX_COLUMN = "row"


def value_column(column: str) -> str:
    """Name of the parsed-number column of a coordinate column."""
    return f"{column}_value"


# --------------------------------------------------------------------------------------
# The frame GX sees
# --------------------------------------------------------------------------------------


def table_frame(raw: pd.DataFrame) -> pd.DataFrame:
    """The contract columns of a raw CSV frame as GX validates them, plus derived columns.

    Text stays as written (blank cells become null); coordinates matching NUMBER_PATTERN are
    parsed into ``<column>_value`` (NaN otherwise, including blanks); an extent is
    ``max - min`` where positive (NaN otherwise: inverted boxes are not also "too small").
    """
    table = pd.DataFrame({INDEX_COLUMN: np.arange(len(raw), dtype=np.int64)})
    for column in ANNOTATION_COLUMNS:
        text = raw[column].astype(object)
        table[column] = text.where(text.str.strip() != "", None)
    for column in BOX_COLUMNS:
        text = raw[column].str.strip()
        number = text.where(text.str.fullmatch(NUMBER_PATTERN), None)
        table[value_column(column)] = pd.to_numeric(number, errors="coerce").astype("float64")
    for name, (low, high) in EXTENTS.items():
        extent = table[value_column(high)] - table[value_column(low)]
        table[name] = extent.where(extent > 0)
    return table


# --------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One GX expectation (class name in ``great_expectations.expectations`` and its
    arguments) and the validate check its failing rows count for."""

    check: str
    expectation: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    warn: bool = False  # reported, quarantines nothing

    def columns(self) -> list[str]:
        """The data columns the expectation looks at."""
        keys = ("column", "column_A", "column_B")
        return [self.kwargs[key] for key in keys if key in self.kwargs] + list(
            self.kwargs.get("column_list", [])
        )


def _each(check: str, expectation: str, columns: Iterable[str], **kwargs: Any) -> list[Rule]:
    """The same expectation on each of several columns."""
    return [Rule(check, expectation, {"column": column, **kwargs}) for column in columns]


def annotation_rules(limits: ValidateParams) -> list[Rule]:
    """Structure, coordinates, boxes and paths: everything that needs no class list."""
    values = [value_column(column) for column in BOX_COLUMNS]
    inverted = [
        Rule(
            "inverted_box",
            "ExpectColumnPairValuesAToBeGreaterThanB",
            {
                "column_A": value_column(high),
                "column_B": value_column(low),
                "or_equal": False,
                "ignore_row_if": "either_value_is_missing",
            },
        )
        for low, high in EXTENTS.values()
    ]
    return [
        Rule(
            "columns",
            "ExpectTableColumnsToMatchSet",
            {"column_set": ANNOTATION_COLUMNS, "exact_match": False},
        ),
        *_each("missing_value", "ExpectColumnValuesToNotBeNull", ANNOTATION_COLUMNS),
        *_each("not_a_number", "ExpectColumnValuesToMatchRegex", BOX_COLUMNS, regex=NUMBER_PATTERN),
        *_each("out_of_range", "ExpectColumnValuesToBeBetween", values, min_value=0, max_value=1),
        *inverted,
        *_each(
            "box_too_small", "ExpectColumnValuesToBeBetween", EXTENTS, min_value=limits.min_box_size
        ),
        *_each(
            "unsafe_path",
            "ExpectColumnValuesToNotMatchRegex",
            ["image_id", "folder"],
            regex=UNSAFE_NAME_PATTERN,
        ),
        Rule(
            "repeated_row",
            "ExpectCompoundColumnsToBeUnique",
            {"column_list": ["image_id", "folder", "class_name", *values]},
            warn=True,
        ),
    ]


def class_rules(classes: list[str]) -> list[Rule]:
    """class_name and folder must be names of the class list."""
    return [
        Rule(check, "ExpectColumnValuesToBeInSet", {"column": column, "value_set": classes})
        for check, column in (("unknown_class", "class_name"), ("unknown_folder", "folder"))
    ]


def describe(rule: Rule, found: dict[str, Any]) -> str:
    """A readable detail for one failing row; ``found`` holds its values of rule.columns()."""
    column = rule.kwargs.get("column")
    if rule.check == "missing_value":
        return f"empty {column}"
    if rule.check in {"not_a_number", "unsafe_path"}:
        return f"{column}={found.get(column)!r}"
    if rule.check == "out_of_range":
        return f"{column.removesuffix('_value')}={found.get(column):g}"
    if rule.check == "inverted_box":
        low, high = rule.kwargs["column_B"], rule.kwargs["column_A"]
        return (
            f"{low.removesuffix('_value')} {found.get(low):g} >= "
            f"{high.removesuffix('_value')} {found.get(high):g}"
        )
    if rule.check == "box_too_small":
        return (
            f"{column.removeprefix('box_')} {found.get(column):.4g} < {rule.kwargs['min_value']:g}"
        )
    if rule.check in {"unknown_class", "unknown_folder"}:
        return f"{column} {found.get(column)!r} not in the class list"
    return ", ".join(f"{key}={value!r}" for key, value in found.items())


# --------------------------------------------------------------------------------------
# Running GX
# --------------------------------------------------------------------------------------


class Failure(NamedTuple):
    """One row failing one rule."""

    split: str
    row: int
    check: str
    detail: str
    warn: bool


@dataclass
class RuleSummary:
    """One rule's outcome per split, for the report and the log."""

    suite: str
    check: str
    expectation: str
    columns: list[str]
    unexpected: dict[str, int] = field(default_factory=dict)
    success: dict[str, bool] = field(default_factory=dict)


def _import_gx():
    """Import GX with its usage statistics off (it would try to reach the network)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


# Data Docs are a DVC output: their bytes must follow from the data and params alone. GX
# stamps each validation with the clock (folder names, the index, the batch's load time),
# each page's logo URL with a cache-busting time and each collapsible block with a random
# uuid. The run is named by what it checked, at a fixed time, and the pages are stabilized.
FIXED_RUN_TIME = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_CACHE_BUSTER = re.compile(r"\?d=\d{8}T\d{6}\.\d+Z")
_STAMP = re.compile(r"\d{8}T\d{6}\.\d+Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def stable_page(html: str) -> str:
    """A Data Docs page without clock times or random ids (uuids numbered in order)."""
    html = _CACHE_BUSTER.sub("", html)
    html = _STAMP.sub(FIXED_RUN_TIME.strftime("%Y%m%dT%H%M%S.%fZ"), html)
    numbers: dict[str, str] = {}
    return _UUID.sub(lambda m: numbers.setdefault(m.group(), f"block{len(numbers)}"), html)


def run_identity(tables: dict[str, pd.DataFrame], settings: Any) -> str:
    """A short name for one validation run: a digest of the tables and the settings."""
    digest = hashlib.sha256(repr(settings).encode())
    for split in sorted(tables):
        digest.update(split.encode())
        digest.update(pd.util.hash_pandas_object(tables[split], index=True).values.tobytes())
    return f"data-{digest.hexdigest()[:12]}"


class SuiteRunner:
    """One ephemeral GX context: suites run on one batch per split, then Data Docs are built.

    ``run_name`` names every validation of this runner (``run_identity``), so the same
    data and settings give the same Data Docs, byte for byte.
    """

    def __init__(self, run_name: str) -> None:
        self.run_name = run_name
        gx = _import_gx()
        self._gx = gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
        )

        # In memory, and without the default Data Docs site (a temporary folder).
        config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults())
        self.context = gx.get_context(mode="ephemeral", project_config=config)
        self.context.variables.progress_bars = {"globally": False}
        self._source = self.context.data_sources.add_pandas("snackloc")
        self._batches: dict[str, Any] = {}
        self.summaries: list[RuleSummary] = []

    def _batch_definition(self, split: str):
        if split not in self._batches:
            asset = self._source.add_dataframe_asset(f"annotations-{split}")
            self._batches[split] = asset.add_batch_definition_whole_dataframe("whole table")
        return self._batches[split]

    def run(self, name: str, rules: list[Rule], tables: dict[str, pd.DataFrame]) -> list[Failure]:
        """Validate every split's table against the suite ``name``; return the failing rows."""
        import great_expectations.expectations as gxe

        suite = self.context.suites.add(self._gx.ExpectationSuite(name=f"snackloc.{name}"))
        for number, rule in enumerate(rules):
            severity = "warning" if rule.warn else "critical"
            meta = {"check": rule.check, "rule": number}
            suite.add_expectation(
                getattr(gxe, rule.expectation)(**rule.kwargs, meta=meta, severity=severity)
            )
        summaries = [
            RuleSummary(name, rule.check, rule.expectation, rule.columns()) for rule in rules
        ]
        self.summaries += summaries
        failures: list[Failure] = []
        for split, table in tables.items():
            definition = self.context.validation_definitions.add(
                self._gx.ValidationDefinition(
                    name=f"{name}-{split}", data=self._batch_definition(split), suite=suite
                )
            )
            result = definition.run(
                batch_parameters={"dataframe": table},
                result_format={
                    "result_format": "COMPLETE",
                    "unexpected_index_column_names": [INDEX_COLUMN],
                },
                run_id=self._gx.RunIdentifier(run_name=self.run_name, run_time=FIXED_RUN_TIME),
            )
            for outcome in result.results:
                rule_number = outcome.expectation_config.meta["rule"]
                rule, summary = rules[rule_number], summaries[rule_number]
                _raise_on_exception(outcome, rule)
                found = outcome.result.get("unexpected_index_list") or []
                summary.unexpected[split] = len(found)
                summary.success[split] = bool(outcome.success)
                failures += [
                    Failure(
                        split, int(row[INDEX_COLUMN]), rule.check, describe(rule, row), rule.warn
                    )
                    for row in found
                ]
        return failures

    def build_docs(self, target: Path) -> Path:
        """Write the Data Docs site to ``target`` (replaced whole); return its index.html."""
        site_log = logging.getLogger("great_expectations.render.renderer.site_builder")
        if _one_line not in site_log.filters:
            site_log.addFilter(_one_line)
        with replaced_dir(target) as tmp:
            site = {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(tmp.resolve()),  # GX wants it absolute
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
            self.context.add_data_docs_site("snackloc", site)
            self.context.build_data_docs(site_names=["snackloc"])
            for page in tmp.rglob("*.html"):
                page.write_text(stable_page(page.read_text()))
        return Path(target) / "index.html"


def _one_line(record: logging.LogRecord) -> bool:
    """Cut the traceback GX pastes into a page-rendering error: the error stays, on one line."""
    message = record.getMessage()
    if '.  Traceback: "' in message:
        record.msg, record.args = message.split('.  Traceback: "', 1)[0], None
    return True


def docs_placeholder(target: Path) -> Path:
    """An index.html saying Data Docs are off (the folder stays a valid DVC out)."""
    with replaced_dir(target) as tmp:
        (tmp / "index.html").write_text(
            "<html><body><p>Data Docs are off (<code>validate.data_docs: false</code>); "
            "see report.json.</p></body></html>\n"
        )
    return target / "index.html"


def _raise_on_exception(outcome: Any, rule: Rule) -> None:
    """A rule GX could not evaluate is a bug here, not a data problem: say so loudly."""
    info = outcome.exception_info or {}
    # One dict, or one per metric the expectation computed.
    infos = [info] if "raised_exception" in info else list(info.values())
    for item in infos:
        if item.get("raised_exception"):
            raise RuntimeError(
                f"Great Expectations could not evaluate {rule.expectation} {rule.kwargs}: "
                f"{item.get('exception_message')}"
            )
