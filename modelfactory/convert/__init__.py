"""Other people's weights: foreign checkpoints <-> modelfactory parameter names.

A conversion is data, not code: a YAML file of renames, transposes and ties. Shipped ones
live in ``conf/convert/`` (``hf_gpt2``: Hugging Face GPT-2 <-> ``model=gpt2``); a user
writes one for another model family and passes its path. ``from`` is always the foreign
name, ``to`` the modelfactory name; importing goes from -> to, exporting to -> from.

Schema (paths in error messages read ``convert.renames.3.to``)::

    description: str                  optional, for people
    optional_prefix: str              optional, e.g. "transformer.": a foreign name that
                                      matches no rule is tried again with it prepended
    renames:                          required, a non-empty list
      - from: FOREIGN                 e.g. "transformer.h.{i}.attn.c_attn.weight"
        to: NATIVE                    e.g. "blocks.{i}.attn.body.mha.qkv.weight"
        transpose: bool               optional (false): a 2-D tensor is stored transposed
    ties:                             optional: foreign names that are another tensor
      - from: FOREIGN                 e.g. "lm_head.weight"; never written, checked if read
        to: NATIVE | null             the native name given the same tensor on import
        same_as: FOREIGN              the ``from`` of a rename (the tie's source)
    ignore: [FOREIGN, ...]            optional: foreign tensors dropped on import (buffers)
    config:                           optional: the foreign config file export_dir writes
      file: str                       default "config.json"
      values: {key: VALUE}            VALUE is a literal, or one of these mappings, read
                                      off the model being exported:
                                        {shape: NATIVE_NAME, dim: D, offset: K}  (K default 0)
                                        {count: NATIVE_PATTERN}  distinct {i} values
                                        {attr: dotted.module.path.attribute}
                                        {dtype: NATIVE_NAME}     e.g. "float32"
                                        {value: LITERAL}         a literal mapping
      check: [key, ...]               keys of the file's config that must equal the model's
                                      on import (what tensor shapes cannot tell)

Placeholders such as ``{i}`` match a run of characters inside one name segment: an index
(``h.{i}.attn``) or a word (``norm.{p}`` covers ``weight``, ``bias``, ``running_mean``, ...),
ending at the next ``.`` or the first character of the text after the placeholder; two
placeholders must be separated by text. ``from`` and ``to`` (and ``same_as``) name the same
placeholders. A conversion is one-to-one: rules that would produce one name
twice, and tensors no rule matches, are errors, reported together.

The package: ``_rules`` (patterns, renames, ties, the ``Conversion``), ``_file`` (finding,
reading and validating a conversion file), ``_states`` (renaming whole states both ways),
``_foreign_config`` (the foreign ``config.json``), ``_dirs`` (foreign directories on
disk) and ``_weights`` (a model's weights from and into a foreign directory: what
``mf.load_weights(convert=)`` and ``mf.save(convert=)`` do).
"""

from __future__ import annotations

from ._dirs import export_dir, read_foreign_dir
from ._file import load_conversion, shipped_conversions
from ._foreign_config import check_config, foreign_config
from ._rules import INDEX, WEIGHTS, Conversion, Pattern
from ._states import check_against, export_state, import_state
from ._weights import load_converted, save_converted

__all__ = [
    "INDEX",
    "WEIGHTS",
    "Conversion",
    "Pattern",
    "check_against",
    "check_config",
    "export_dir",
    "export_state",
    "foreign_config",
    "import_state",
    "load_conversion",
    "load_converted",
    "read_foreign_dir",
    "save_converted",
    "shipped_conversions",
]
