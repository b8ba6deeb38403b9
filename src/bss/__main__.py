from bss.cli import app

app()
