//! The message log behind every push endpoint: per room, ids 1, 2, 3, ..., the last
//! `limit` messages kept in memory, and optionally every message in SQLite.
//!
//! With SQLite, one writer thread commits messages in the order their ids were handed out,
//! batching whatever queued up during the previous commit into one transaction
//! (`synchronous=FULL`, WAL). A publisher is answered, and the message becomes visible to
//! subscribers, only once its transaction has committed. Commits may finish in any order as
//! seen from the tasks, so visibility goes strictly by id: a message waits until every
//! earlier id of its room is committed (or has failed).
//!
//! Rooms live only as long as they are needed. Every user of a room holds it through a
//! [`Held`]; when the last one goes, a room that loses nothing by going (no message
//! published yet) is dropped at once, and with SQLite a room with messages joins a queue of
//! rooms nobody holds, to be dropped (oldest release first) when a new room needs its place
//! under the `max_rooms` cap; it is reloaded from SQLite on next use. So every room that could
//! be freed is either gone already or on that queue, and [`Hub::room`] needs O(1) amortised
//! work to find space, or to refuse with [`RoomLimit`].

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::Error;

/// One published message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub id: u64,
    pub data: Utf8Bytes,
}

/// Messages after some id, and the ids that were asked for but are no longer kept.
#[derive(Debug, Default)]
pub struct Since {
    pub msgs: Vec<Msg>,
    /// `(first, last)` ids that are gone from the log.
    pub missed: Option<(u64, u64)>,
}

/// One room's log and its subscribers' wake-up channel.
pub struct Room {
    pub name: Rc<str>,
    log: RefCell<VecDeque<Msg>>,
    /// Last id handed out to a publisher.
    assigned: Cell<u64>,
    /// Last id visible to readers.
    visible: Cell<u64>,
    /// Stored out of order, waiting for an earlier id (`None`: that id failed to store).
    waiting: RefCell<BTreeMap<u64, Option<Msg>>>,
    tx: watch::Sender<u64>,
    /// On the hub's queue of rooms nobody holds (SQLite only).
    queued: Cell<bool>,
}

impl Room {
    fn new(name: &str, last: u64, recent: Vec<Msg>) -> Self {
        Self {
            name: Rc::from(name),
            log: RefCell::new(recent.into()),
            assigned: Cell::new(last),
            visible: Cell::new(last),
            waiting: RefCell::new(BTreeMap::new()),
            tx: watch::Sender::new(last),
            queued: Cell::new(false),
        }
    }

    /// The last visible id (0: none yet).
    pub fn last_id(&self) -> u64 {
        self.visible.get()
    }

    /// A receiver that sees every later change of the last visible id.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    /// Kept messages with id > `after`, in order.
    pub fn since(&self, after: u64) -> Since {
        let log = self.log.borrow();
        if after >= self.visible.get() {
            return Since::default();
        }
        let start = log.partition_point(|m| m.id <= after);
        let msgs: Vec<Msg> = log.range(start..).cloned().collect();
        let first_kept = log.front().map_or(self.visible.get() + 1, |m| m.id);
        let missed = (after + 1 < first_kept).then(|| (after + 1, first_kept - 1));
        Since { msgs, missed }
    }

    /// Make `id` visible (or skip it when it failed), then every id waiting behind it.
    fn complete(&self, id: u64, msg: Option<Msg>, limit: usize) {
        let mut waiting = self.waiting.borrow_mut();
        waiting.insert(id, msg);
        let before = self.visible.get();
        let mut log = self.log.borrow_mut();
        while let Some(entry) = waiting.first_entry() {
            if *entry.key() != self.visible.get() + 1 {
                break;
            }
            let (k, m) = entry.remove_entry();
            self.visible.set(k);
            if let Some(m) = m {
                log.push_back(m);
                while log.len() > limit {
                    log.pop_front();
                }
            }
        }
        if self.visible.get() != before {
            self.tx.send_replace(self.visible.get());
        }
    }
}

struct SendJob {
    room: String,
    id: u64,
    data: Utf8Bytes,
    ack: oneshot::Sender<Result<(), String>>,
}

struct Durable {
    path: PathBuf,
    read: rusqlite::Connection,
    tx: Option<std::sync::mpsc::Sender<SendJob>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// Every room of one server.
pub struct Hub {
    rooms: RefCell<HashMap<Rc<str>, Rc<Room>>>,
    /// With SQLite: rooms with messages that nobody held at their last release, oldest
    /// first (an entry whose room is held again, or was queued again, is skipped).
    idle: RefCell<VecDeque<Rc<str>>>,
    limit: usize,
    max_rooms: usize,
    /// The number of rooms in memory, shared with the server's counters.
    gauge: Rc<Cell<u64>>,
    durable: Option<Durable>,
}

/// A new room was refused: the hub already holds `max` rooms that cannot be freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomLimit {
    pub max: usize,
}

impl std::fmt::Display for RoomLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "room limit reached (--max-rooms {})", self.max)
    }
}

/// A room in use. The room stays in the hub while any `Held` of it lives; dropping the last
/// one lets the hub free it (see the module notes).
pub struct Held<'h> {
    hub: &'h Hub,
    room: Rc<Room>,
}

impl std::ops::Deref for Held<'_> {
    type Target = Room;
    fn deref(&self) -> &Room {
        &self.room
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.hub.release(&self.room);
    }
}

fn store_err(path: &Path, what: &str, e: &rusqlite::Error) -> Error {
    Error::Io {
        what: format!("{what} store {}", path.display()),
        source: std::io::Error::other(e.to_string()),
    }
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS messages (
    room TEXT NOT NULL,
    id INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (room, id)
) WITHOUT ROWID;";

fn open(path: &Path) -> Result<rusqlite::Connection, Error> {
    let c = rusqlite::Connection::open(path).map_err(|e| store_err(path, "open", &e))?;
    c.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| store_err(path, "set WAL mode on", &e))?;
    c.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| store_err(path, "set synchronous=FULL on", &e))?;
    c.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| store_err(path, "set a busy timeout on", &e))?;
    c.execute_batch(SCHEMA)
        .map_err(|e| store_err(path, "create the table in", &e))?;
    Ok(c)
}

fn write_batch(c: &mut rusqlite::Connection, batch: &[SendJob]) -> Result<(), rusqlite::Error> {
    let t = c.transaction()?;
    {
        let mut st =
            t.prepare_cached("INSERT INTO messages (room, id, data) VALUES (?1, ?2, ?3)")?;
        for j in batch {
            st.execute(rusqlite::params![
                j.room,
                i64::try_from(j.id).unwrap_or(i64::MAX),
                j.data.as_str()
            ])?;
        }
    }
    t.commit()
}

fn writer(mut c: rusqlite::Connection, rx: &std::sync::mpsc::Receiver<SendJob>) {
    const BATCH: usize = 4096;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let r = write_batch(&mut c, &batch).map_err(|e| e.to_string());
        for j in batch {
            let _ = j.ack.send(r.clone());
        }
    }
}

/// Check that `path` can be opened as the message store (created when missing).
///
/// # Errors
/// [`Error::Io`] naming the file and what failed.
pub fn check(path: &Path) -> Result<(), Error> {
    open(path).map(drop)
}

impl Hub {
    /// A hub keeping `limit` messages per room in memory, and all of them in SQLite at
    /// `store` when given, with at most `max_rooms` rooms in memory; `gauge` follows the
    /// number of rooms in memory.
    ///
    /// # Errors
    /// [`Error::Io`] when the SQLite file cannot be opened or set up.
    pub fn new(
        limit: usize,
        max_rooms: usize,
        store: Option<&Path>,
        gauge: Rc<Cell<u64>>,
    ) -> Result<Self, Error> {
        let durable = match store {
            None => None,
            Some(path) => {
                let w = open(path)?;
                let read = open(path)?;
                let (tx, rx) = std::sync::mpsc::channel();
                let writer = std::thread::Builder::new()
                    .name("kaprobe-store".into())
                    .spawn(move || writer(w, &rx))
                    .map_err(|source| Error::Io {
                        what: format!("start the writer thread of store {}", path.display()),
                        source,
                    })?;
                Some(Durable {
                    path: path.to_owned(),
                    read,
                    tx: Some(tx),
                    writer: Some(writer),
                })
            }
        };
        gauge.set(0);
        Ok(Self {
            rooms: RefCell::new(HashMap::new()),
            idle: RefCell::new(VecDeque::new()),
            limit: limit.max(1),
            max_rooms: max_rooms.max(1),
            gauge,
            durable,
        })
    }

    /// True when messages are kept in SQLite.
    pub fn durable(&self) -> bool {
        self.durable.is_some()
    }

    /// The room called `name`, created (and, with SQLite, loaded) when not in memory.
    ///
    /// # Errors
    /// [`RoomLimit`] when the room is not in memory and `max_rooms` rooms are, none of
    /// which can be freed.
    pub fn room(&self, name: &str) -> Result<Held<'_>, RoomLimit> {
        if let Some(r) = self.rooms.borrow().get(name) {
            return Ok(Held {
                hub: self,
                room: r.clone(),
            });
        }
        if !self.make_space() {
            return Err(RoomLimit {
                max: self.max_rooms,
            });
        }
        let (last, recent) = match &self.durable {
            Some(d) => load(&d.read, name, self.limit).unwrap_or_default(),
            None => (0, Vec::new()),
        };
        let r = Rc::new(Room::new(name, last, recent));
        let mut rooms = self.rooms.borrow_mut();
        rooms.insert(r.name.clone(), r.clone());
        self.gauge.set(rooms.len() as u64);
        Ok(Held { hub: self, room: r })
    }

    /// Rooms in memory now.
    pub fn len(&self) -> usize {
        self.rooms.borrow().len()
    }

    /// True when no room is in memory.
    pub fn is_empty(&self) -> bool {
        self.rooms.borrow().is_empty()
    }

    /// Free queued rooms until there is room for one more; false when none is left to free.
    fn make_space(&self) -> bool {
        let mut rooms = self.rooms.borrow_mut();
        let mut idle = self.idle.borrow_mut();
        while rooms.len() >= self.max_rooms {
            let Some(name) = idle.pop_front() else {
                return false;
            };
            let Some(r) = rooms.get(&name) else { continue };
            if !r.queued.replace(false) {
                continue;
            }
            // Held again since it was queued: its next release queues it again.
            if Rc::strong_count(r) == 1 {
                rooms.remove(&name);
            }
        }
        self.gauge.set(rooms.len() as u64);
        true
    }

    /// Called as a [`Held`] of `room` goes (while it still counts): when it is the last,
    /// drop a room that loses nothing by going, or queue one that SQLite can restore.
    fn release(&self, room: &Rc<Room>) {
        // The hub's map and the `Held` being dropped.
        if Rc::strong_count(room) != 2 {
            return;
        }
        if room.assigned.get() == 0 {
            let mut rooms = self.rooms.borrow_mut();
            if rooms.get(&room.name).is_some_and(|r| Rc::ptr_eq(r, room)) {
                rooms.remove(&room.name);
                self.gauge.set(rooms.len() as u64);
            }
        } else if self.durable.is_some() && !room.queued.replace(true) {
            self.idle.borrow_mut().push_back(room.name.clone());
        }
    }

    /// Messages of `room` with id > `after`: from memory, and with SQLite also those that
    /// memory no longer keeps.
    pub fn since(&self, room: &Room, after: u64) -> Since {
        let mut s = room.since(after);
        if let (Some(d), Some((lo, hi))) = (&self.durable, s.missed) {
            if let Ok(mut older) = range(&d.read, &room.name, lo, hi) {
                older.append(&mut s.msgs);
                s.msgs = older;
                s.missed = None;
            }
        }
        s
    }

    /// Store a message and make it visible; its id once stored.
    ///
    /// # Errors
    /// The SQLite error text when the message could not be committed.
    pub async fn publish(&self, room: &Room, data: Utf8Bytes) -> Result<u64, String> {
        let id = room.assigned.get() + 1;
        room.assigned.set(id);
        if let Some(tx) = self.durable.as_ref().and_then(|d| d.tx.as_ref()) {
            let (ack, done) = oneshot::channel();
            let sent = tx.send(SendJob {
                room: room.name.to_string(),
                id,
                data: data.clone(),
                ack,
            });
            let r = if sent.is_err() {
                Err("the store writer has stopped".to_owned())
            } else {
                done.await
                    .unwrap_or_else(|_| Err("the store writer has stopped".to_owned()))
            };
            if let Err(e) = r {
                room.complete(id, None, self.limit);
                return Err(e);
            }
        }
        room.complete(id, Some(Msg { id, data }), self.limit);
        Ok(id)
    }

    /// Stop the writer after the messages already queued are committed.
    pub fn close(&mut self) {
        if let Some(d) = &mut self.durable {
            d.tx = None;
            if let Some(w) = d.writer.take() {
                let _ = w.join();
            }
        }
    }

    /// The SQLite file, if any.
    pub fn store_path(&self) -> Option<&Path> {
        self.durable.as_ref().map(|d| d.path.as_path())
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.close();
    }
}

fn to_msgs(
    st: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<Msg>, rusqlite::Error> {
    let rows = st.query_map(params, |r| {
        let id: i64 = r.get(0)?;
        let data: String = r.get(1)?;
        Ok(Msg {
            id: u64::try_from(id).unwrap_or(0),
            data: Utf8Bytes::from(data),
        })
    })?;
    rows.collect()
}

fn load(
    c: &rusqlite::Connection,
    room: &str,
    limit: usize,
) -> Result<(u64, Vec<Msg>), rusqlite::Error> {
    let last: Option<i64> = c.query_row(
        "SELECT MAX(id) FROM messages WHERE room = ?1",
        [room],
        |r| r.get(0),
    )?;
    let mut st = c.prepare_cached(
        "SELECT id, data FROM messages WHERE room = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let mut recent = to_msgs(
        &mut st,
        rusqlite::params![room, i64::try_from(limit).unwrap_or(i64::MAX)],
    )?;
    recent.reverse();
    Ok((last.map_or(0, |l| u64::try_from(l).unwrap_or(0)), recent))
}

fn range(
    c: &rusqlite::Connection,
    room: &str,
    lo: u64,
    hi: u64,
) -> Result<Vec<Msg>, rusqlite::Error> {
    let mut st = c.prepare_cached(
        "SELECT id, data FROM messages WHERE room = ?1 AND id BETWEEN ?2 AND ?3 ORDER BY id",
    )?;
    let lo = i64::try_from(lo).unwrap_or(i64::MAX);
    let hi = i64::try_from(hi).unwrap_or(i64::MAX);
    to_msgs(&mut st, rusqlite::params![room, lo, hi])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u64) -> Option<Msg> {
        Some(Msg {
            id,
            data: Utf8Bytes::from(id.to_string()),
        })
    }

    #[test]
    fn out_of_order_commits_become_visible_in_id_order() {
        let r = Room::new("r", 0, Vec::new());
        r.complete(2, msg(2), 10);
        assert_eq!(r.last_id(), 0);
        assert!(r.since(0).msgs.is_empty());
        r.complete(1, msg(1), 10);
        assert_eq!(r.last_id(), 2);
        let ids: Vec<u64> = r.since(0).msgs.iter().map(|m| m.id).collect();
        assert_eq!(ids, [1, 2]);
        // A failed id is skipped, not waited for forever.
        r.complete(4, msg(4), 10);
        r.complete(3, None, 10);
        assert_eq!(r.last_id(), 4);
        let ids: Vec<u64> = r.since(1).msgs.iter().map(|m| m.id).collect();
        assert_eq!(ids, [2, 4]);
    }

    #[test]
    fn a_resume_older_than_the_window_says_what_was_missed() {
        let r = Room::new("r", 0, Vec::new());
        for id in 1..=5 {
            r.complete(id, msg(id), 3);
        }
        let s = r.since(1);
        assert_eq!(s.missed, Some((2, 2)));
        assert_eq!(s.msgs.iter().map(|m| m.id).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(r.since(2).missed, None);
        assert!(r.since(5).msgs.is_empty());
    }

    #[test]
    fn sqlite_keeps_messages_and_ids_across_a_reopen() {
        let (dir, path) = fresh_store("kaprobe-store");
        let rt = rt();
        rt.block_on(async {
            let mut hub = Hub::new(2, 10, Some(&path), Rc::default()).unwrap();
            let room = hub.room("a").unwrap();
            for i in 1..=4u64 {
                let id = hub
                    .publish(&room, Utf8Bytes::from(format!("m{i}")))
                    .await
                    .unwrap();
                assert_eq!(id, i);
            }
            drop(room);
            hub.close();
        });
        rt.block_on(async {
            let hub = Hub::new(2, 10, Some(&path), Rc::default()).unwrap();
            let room = hub.room("a").unwrap();
            assert_eq!(room.last_id(), 4);
            let s = hub.since(&room, 0);
            assert_eq!(s.missed, None);
            let data: Vec<&str> = s.msgs.iter().map(|m| m.data.as_str()).collect();
            assert_eq!(data, ["m1", "m2", "m3", "m4"]);
            assert_eq!(hub.publish(&room, Utf8Bytes::from("m5")).await.unwrap(), 5);
            drop(room);
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A directory of this process under the temp dir, and a store path in it with no file.
    fn fresh_store(tag: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("t.sqlite");
        let _ = std::fs::remove_file(&path);
        (dir, path)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn an_empty_room_is_freed_when_its_last_holder_goes() {
        let gauge = Rc::new(Cell::new(0));
        let hub = Hub::new(10, 2, None, gauge.clone()).unwrap();
        let a = hub.room("a").unwrap();
        let a2 = hub.room("a").unwrap();
        assert_eq!((hub.len(), gauge.get()), (1, 1));
        drop(a);
        assert_eq!(hub.len(), 1, "still held by a2");
        drop(a2);
        assert_eq!((hub.len(), gauge.get()), (0, 0));
        // Many distinct empty rooms, one at a time, never reach the cap of 2.
        for i in 0..1000 {
            let r = hub.room(&format!("r{i}")).unwrap();
            assert_eq!(r.last_id(), 0);
        }
        assert!(hub.is_empty());
    }

    #[test]
    fn in_memory_rooms_with_messages_or_holders_are_kept_and_the_cap_refuses_new_ones() {
        let gauge = Rc::new(Cell::new(0));
        let hub = Hub::new(10, 2, None, gauge.clone()).unwrap();
        rt().block_on(async {
            let a = hub.room("a").unwrap();
            assert_eq!(hub.publish(&a, Utf8Bytes::from("x")).await.unwrap(), 1);
        });
        let held = hub.room("b").unwrap();
        assert_eq!(gauge.get(), 2);
        assert_eq!(hub.room("c").err(), Some(RoomLimit { max: 2 }));
        assert_eq!(
            RoomLimit { max: 2 }.to_string(),
            "room limit reached (--max-rooms 2)"
        );
        // Rooms already there keep working at the cap.
        let a = hub.room("a").unwrap();
        assert_eq!(a.since(0).msgs.len(), 1);
        drop(a);
        assert_eq!(hub.len(), 2, "a holds a message: not freed without SQLite");
        drop(held);
        assert_eq!(hub.len(), 1, "b was empty: freed");
        assert!(hub.room("c").is_ok());
    }

    #[test]
    fn with_sqlite_unheld_rooms_make_way_and_come_back_with_their_ids() {
        let (dir, path) = fresh_store("kaprobe-rooms");
        let gauge = Rc::new(Cell::new(0));
        let mut hub = Hub::new(10, 2, Some(&path), gauge.clone()).unwrap();
        rt().block_on(async {
            for (name, n) in [("a", 2), ("b", 1), ("c", 1)] {
                let r = hub.room(name).unwrap();
                for _ in 0..n {
                    hub.publish(&r, Utf8Bytes::from(name)).await.unwrap();
                }
            }
            assert_eq!(gauge.get(), 2, "a made way for c");
            // A held room is not freed: with b and c both held, a new room is refused.
            let b = hub.room("b").unwrap();
            let c = hub.room("c").unwrap();
            assert!(hub.room("a").is_err());
            drop(c);
            // a comes back from SQLite in c's place, and its ids go on.
            let a = hub.room("a").unwrap();
            assert_eq!(a.last_id(), 2);
            let s = hub.since(&a, 0);
            let ids: Vec<u64> = s.msgs.iter().map(|m| m.id).collect();
            assert_eq!(ids, [1, 2]);
            assert_eq!(hub.publish(&a, Utf8Bytes::from("a3")).await.unwrap(), 3);
            drop((a, b));
            // Held and released again while queued: queued once, freed once.
            for _ in 0..100 {
                drop(hub.room("a").unwrap());
            }
            assert!(hub.idle.borrow().len() <= hub.len());
            let c = hub.room("c").unwrap();
            assert_eq!(c.last_id(), 1);
        });
        hub.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
