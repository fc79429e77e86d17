"""Your app's own database: a table of notes, with synchronous SQLModel sessions."""

from sqlmodel import Field, Session, SQLModel, create_engine

from .config import get_settings

engine = create_engine(get_settings().database_url)


class Note(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    text: str


def create_tables() -> None:
    SQLModel.metadata.create_all(engine)


def save_note(text: str) -> Note:
    with Session(engine) as session:
        note = Note(text=text)
        session.add(note)
        session.commit()
        session.refresh(note)
        return note
