"""``logvm-browser``: a GTK 3 log browser in the LogVM (floor 4).

Runs as the LogVM's default user and reads the store with the CLI's reader,
record parser and summaries (:mod:`qubes_logvm.store`, :mod:`qubes_logvm.core`).
Modules: :mod:`.app` (the ``Gtk.Application`` and entry point),
:mod:`.window` (built from ``browser.ui``, set up separately),
:mod:`.model` (lazy rows), :mod:`.recordview` (the virtual list),
:mod:`.search`, :mod:`.qubes` (list figures), :mod:`.text` (inert text).
"""
