//! CNI driver: network configs, network namespaces, plugin ADD/DEL/CHECK, port mappings.
