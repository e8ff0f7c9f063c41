"""Data package: the split lists and class tables shipped with the converters (``*.txt``).

Read them with ``spectralmoe.data.prepare.lists`` (``shipped(name)``, ``read_id_list``,
``read_table``). Files whose content no source could confirm say ``UNVERIFIED`` in their name.
"""
