"""Quality filters for synthetic image-mask pairs (registered as ``fairmonai.filters`` entry points).

A filter plugin is created by name (``fairmonai.registry.create("filter", name, **options)``) and speaks one
of two protocols, which the fairness pipeline's filter step both understands:

* ``plugin(manifest_path) -> sequence of bool``: one keep flag per manifest row (in row order); the step
  writes the kept rows itself.
* ``plugin.filter_manifest(manifest_path, out_dir) -> dict``: the plugin writes ``out_dir/synthetic.csv``
  (the kept rows, whose paths resolve relative to ``out_dir``; a filter may replace a row's mask),
  ``out_dir/filter_groups.csv`` (per group: total, kept, kept_with_segmenter_mask, dropped, drop rate) and
  returns a JSON-ready summary (the step records it in ``filter.json``). When a plugin has this method the
  step calls it instead of the flags protocol.

Built-in: :class:`~fairmonai.filters.dice.DiceFilter` (``dice_filter``), DiffuseExpand's Stage IV.
"""

from fairmonai.filters.dice import DECISIONS, DiceFilter, dice_distance

__all__ = ["DECISIONS", "DiceFilter", "dice_distance"]
