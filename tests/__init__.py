"""paraisite's test suite (a regular package: mace-torch installs a top-level ``tests`` package into site-packages,
which would otherwise shadow this folder's ``tests.helpers``)."""
