from transfer.cli import console

console()
