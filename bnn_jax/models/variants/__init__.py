"""Named variants of the zoo's families (a module per registry name, each exporting ``Model``)."""
