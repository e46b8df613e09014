//! A YAML document as a tree of nodes that remember their line and column.
