//! A typed message for `typed_messages_round_trip`, with serde impls written by hand: the
//! library is built without serde's `derive` feature.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeStruct, Serializer};

/// An order, as an application might send one between services.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Order {
    /// Serialized as `"type"`, the key consumers dispatch on.
    pub(crate) kind: String,
    pub(crate) id: i64,
    pub(crate) items: Vec<String>,
    pub(crate) total: f64,
    pub(crate) note: Option<String>,
    pub(crate) stock: BTreeMap<String, i64>,
    pub(crate) urgent: bool,
}

const FIELDS: &[&str] = &["type", "id", "items", "total", "note", "stock", "urgent"];

impl Serialize for Order {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("Order", FIELDS.len())?;
        out.serialize_field("type", &self.kind)?;
        out.serialize_field("id", &self.id)?;
        out.serialize_field("items", &self.items)?;
        out.serialize_field("total", &self.total)?;
        out.serialize_field("note", &self.note)?;
        out.serialize_field("stock", &self.stock)?;
        out.serialize_field("urgent", &self.urgent)?;
        out.end()
    }
}

impl<'de> Deserialize<'de> for Order {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct("Order", FIELDS, OrderVisitor)
    }
}

struct OrderVisitor;

fn required<T, E: de::Error>(value: Option<T>, field: &'static str) -> Result<T, E> {
    value.ok_or_else(|| E::missing_field(field))
}

impl<'de> Visitor<'de> for OrderVisitor {
    type Value = Order;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an order message")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Order, A::Error> {
        let mut kind = None;
        let mut id = None;
        let mut items = None;
        let mut total = None;
        let mut note = None;
        let mut stock = None;
        let mut urgent = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "type" => kind = Some(map.next_value()?),
                "id" => id = Some(map.next_value()?),
                "items" => items = Some(map.next_value()?),
                "total" => total = Some(map.next_value()?),
                "note" => note = Some(map.next_value()?),
                "stock" => stock = Some(map.next_value()?),
                "urgent" => urgent = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Order {
            kind: required(kind, "type")?,
            id: required(id, "id")?,
            items: required(items, "items")?,
            total: required(total, "total")?,
            note: note.unwrap_or(None),
            stock: required(stock, "stock")?,
            urgent: required(urgent, "urgent")?,
        })
    }
}
