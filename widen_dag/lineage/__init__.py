"""Lineage past the asset graph: from a checkpoint back to its data, trees and problems."""
