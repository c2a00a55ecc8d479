//! A data-only pickle machine (protocols 0 to 5) that never executes code: classes are names,
//! calls (`REDUCE`, `NEWOBJ`) and `BUILD`s are recorded, not performed.
//!
//! It produces candle's [`Object`] tree, which the tensor code reads, but unlike candle's own
//! machine it keeps Python's reference semantics: objects live in an arena and the memo holds
//! references, so an object fetched from the memo after being filled (`SETITEMS`, `APPENDS`,
//! `BUILD`) is the filled object. This matters for pickled `nn.Module` trees, where one module
//! may be referenced twice (Ultralytics shares one `SiLU` between all its `Conv`s). Shared
//! objects are copied into each place they occur; a reference to an object from inside itself
//! (a cycle) becomes `None`.
//!
//! Representation: `collections.OrderedDict` and `defaultdict` become [`Object::Dict`]; sets
//! and frozensets become `Reduce { builtins.set, ([items],) }` (as protocol 2 writes a set);
//! bytes become `Reduce { builtins.bytes, (len,) }` without their content; Python 2 strings
//! become [`Object::Unicode`].

use anyhow::{anyhow, bail, Context, Result};
use candle_core::pickle::Object;
use std::collections::HashMap;

/// Deepest nesting converted to an [`Object`] (module trees are a few dozen levels deep; the
/// conversion recurses, so this also bounds its stack use).
const MAX_DEPTH: usize = 300;
/// Most objects one pickle may expand to once shared objects are copied (a state dict takes
/// about 20 per tensor, a pickled module tree about 30 per parameter).
const MAX_OBJECTS: usize = 5_000_000;

type Id = usize;

/// An arena object; containers refer to other arena objects.
#[derive(Clone, Debug)]
enum Node {
    Leaf(Object),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    Reduce(Id, Id),
    Build(Id, Id),
    Persistent(Id),
}

/// Parses one pickle starting at `bytes[0]`; returns the object and the length read (up to and
/// including `STOP`).
pub(crate) fn parse(bytes: &[u8]) -> Result<(Object, usize)> {
    let mut m = Machine {
        data: bytes,
        pos: 0,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        merge_budget: bytes.len(),
    };
    loop {
        let at = m.pos;
        let op = m.u8().context("pickle ends without STOP (truncated?)")?;
        if op == b'.' {
            break;
        }
        m.step(op).with_context(|| format!("pickle opcode 0x{op:02x} at byte {at}"))?;
    }
    let root = m.pop().context("pickle STOP with an empty stack")?;
    let mut conv = Converter { nodes: &m.nodes, active: vec![false; m.nodes.len()], budget: MAX_OBJECTS };
    Ok((conv.object(root, 0)?, m.pos))
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    /// Stacks saved by `MARK` (Python's metastack).
    marks: Vec<Vec<Id>>,
    memo: HashMap<u64, Id>,
    /// Dict items that `BUILD` may still copy (each copy is paid for, so that repeated merges
    /// of one big dict cannot grow memory faster than the file).
    merge_budget: usize,
}

/// Reading the opcode arguments.
impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let left = self.data.len() - self.pos;
        if n > left {
            bail!("needs {n} bytes, {left} left (truncated?)");
        }
        self.pos += n;
        Ok(&self.data[self.pos - n..self.pos])
    }

    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().unwrap())
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.arr::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }

    fn u64(&mut self) -> Result<usize> {
        usize::try_from(u64::from_le_bytes(self.arr()?)).context("length too large")
    }

    /// A newline-terminated argument of the text opcodes, without the newline.
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').context("unterminated text argument")?;
        let s = String::from_utf8_lossy(&rest[..n]).trim_end_matches('\r').to_string();
        self.pos += n + 1;
        Ok(s)
    }

    fn text(&mut self, n: usize) -> Result<Object> {
        Ok(Object::Unicode(String::from_utf8_lossy(self.take(n)?).into_owned()))
    }

    fn bytes(&mut self, n: usize) -> Result<Object> {
        self.take(n)?;
        Ok(call_leaf("builtins", "bytes", vec![Object::Long(n as i64)]))
    }
}

/// `Reduce { module.name, (args...) }` as a leaf.
fn call_leaf(module: &str, name: &str, args: Vec<Object>) -> Object {
    let callable = Object::Class { module_name: module.into(), class_name: name.into() };
    Object::Reduce { callable: Box::new(callable), args: Box::new(Object::Tuple(args)) }
}

/// Little-endian two's complement integer of any length (`LONG1`, `LONG4`); beyond i64, an
/// approximate float.
fn long(b: &[u8]) -> Object {
    let negative = b.last().is_some_and(|&x| x & 0x80 != 0);
    let fill = if negative { 0xff } else { 0 };
    if b.len() <= 8 || b[8..].iter().all(|&x| x == fill) && (b[7] & 0x80 != 0) == negative {
        let mut buf = [fill; 8];
        let n = b.len().min(8);
        buf[..n].copy_from_slice(&b[..n]);
        return Object::Long(i64::from_le_bytes(buf));
    }
    let mag = b.iter().rev().fold(0f64, |a, &x| a * 256.0 + x as f64);
    Object::Float(if negative { mag - 2f64.powf(8.0 * b.len() as f64) } else { mag })
}

/// Stack and arena operations.
impl Machine<'_> {
    fn add(&mut self, node: Node) -> Id {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn push(&mut self, node: Node) {
        let id = self.add(node);
        self.stack.push(id);
    }

    fn leaf(&mut self, o: Object) {
        self.push(Node::Leaf(o));
    }

    fn pop(&mut self) -> Result<Id> {
        self.stack.pop().context("stack underflow")
    }

    fn top(&self) -> Result<Id> {
        self.stack.last().copied().context("stack underflow")
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let outer = self.marks.pop().context("no MARK on the stack")?;
        Ok(std::mem::replace(&mut self.stack, outer))
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Id>> {
        let len = self.stack.len();
        if len < n {
            bail!("stack underflow");
        }
        Ok(self.stack.split_off(len - n))
    }

    fn memo_get(&mut self, key: u64) -> Result<()> {
        let id = *self.memo.get(&key).ok_or_else(|| anyhow!("memo key {key} not set"))?;
        self.stack.push(id);
        Ok(())
    }

    fn memo_put(&mut self, key: u64) -> Result<()> {
        let id = self.top()?;
        self.memo.insert(key, id);
        Ok(())
    }

    /// The container at `id`, opened for filling; an object made by a call (an instance of a
    /// dict, list or set subclass) becomes a plain container.
    fn fill(&mut self, id: Id, empty: Node) -> Result<&mut Node> {
        let node = &mut self.nodes[id];
        let same = std::mem::discriminant(node) == std::mem::discriminant(&empty);
        if !same {
            if !matches!(node, Node::Reduce(..)) {
                bail!("cannot add items to {node:?}");
            }
            *node = empty;
        }
        Ok(node)
    }
}

/// The opcodes.
impl Machine<'_> {
    fn step(&mut self, op: u8) -> Result<()> {
        if self.scalar(op)? || self.container(op)? || self.memo_op(op)? || self.object(op)? {
            Ok(())
        } else {
            bail!("unsupported pickle opcode 0x{op:02x}")
        }
    }

    /// Constants and stack manipulation; false if `op` is not one of them.
    fn scalar(&mut self, op: u8) -> Result<bool> {
        let o = match op {
            0x80 => return self.u8().map(|_| true),  // PROTO
            0x95 => return self.u64().map(|_| true), // FRAME
            b'(' => {
                self.marks.push(std::mem::take(&mut self.stack));
                return Ok(true);
            }
            b'0' => return self.pop().map(|_| true),      // POP
            b'1' => return self.pop_mark().map(|_| true), // POP_MARK
            b'2' => {
                let t = self.top()?;
                self.stack.push(t);
                return Ok(true);
            }
            b'N' => Object::None,
            0x88 => Object::Bool(true),
            0x89 => Object::Bool(false),
            b'K' => Object::Int(self.u8()? as i32),
            b'M' => Object::Int(u16::from_le_bytes(self.arr()?) as i32),
            b'J' => Object::Int(i32::from_le_bytes(self.arr()?)),
            0x8a => {
                let n = self.u8()? as usize;
                long(self.take(n)?)
            }
            0x8b => {
                let n = self.u32()? as usize;
                long(self.take(n)?)
            }
            b'G' => Object::Float(f64::from_be_bytes(self.arr()?)),
            b'I' | b'L' | b'F' => text_number(op, &self.line()?)?,
            b'X' => {
                let n = self.u32()? as usize;
                self.text(n)?
            }
            0x8c | b'U' | b'C' => {
                let n = self.u8()? as usize;
                if op == b'C' {
                    self.bytes(n)?
                } else {
                    self.text(n)?
                }
            }
            0x8d => {
                let n = self.u64()?;
                self.text(n)?
            }
            b'T' | b'B' => {
                let n = self.u32()? as usize;
                if op == b'B' {
                    self.bytes(n)?
                } else {
                    self.text(n)?
                }
            }
            0x8e | 0x96 => {
                let n = self.u64()?;
                self.bytes(n)?
            }
            b'V' => Object::Unicode(self.line()?),
            b'S' => Object::Unicode(self.line()?.trim_matches(|c| c == '\'' || c == '"').to_string()),
            _ => return Ok(false),
        };
        self.leaf(o);
        Ok(true)
    }

    /// Tuples, lists, dicts and sets; false if `op` is not one of them.
    fn container(&mut self, op: u8) -> Result<bool> {
        match op {
            b')' => self.push(Node::Tuple(vec![])),
            b't' => {
                let items = self.pop_mark()?;
                self.push(Node::Tuple(items))
            }
            0x85..=0x87 => {
                let items = self.pop_n((op - 0x84) as usize)?;
                self.push(Node::Tuple(items))
            }
            b']' => self.push(Node::List(vec![])),
            b'l' => {
                let items = self.pop_mark()?;
                self.push(Node::List(items))
            }
            b'a' | b'e' => {
                let items = if op == b'a' { vec![self.pop()?] } else { self.pop_mark()? };
                let Node::List(l) = self.fill(self.top()?, Node::List(vec![]))? else { unreachable!() };
                l.extend(items);
            }
            b'}' => self.push(Node::Dict(vec![])),
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                self.push(Node::Dict(pairs))
            }
            b's' | b'u' => {
                let items = if op == b's' { self.pop_n(2)? } else { self.pop_mark()? };
                let pairs = pairs(items)?;
                let Node::Dict(d) = self.fill(self.top()?, Node::Dict(vec![]))? else { unreachable!() };
                d.extend(pairs);
            }
            0x8f => self.push(Node::Set(vec![])),
            0x90 => {
                let items = self.pop_mark()?;
                let Node::Set(s) = self.fill(self.top()?, Node::Set(vec![]))? else { unreachable!() };
                s.extend(items);
            }
            0x91 => {
                let items = self.pop_mark()?;
                self.push(Node::Set(items))
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The memo; false if `op` is not one of its opcodes.
    fn memo_op(&mut self, op: u8) -> Result<bool> {
        match op {
            b'h' | b'j' | b'g' => {
                let key = self.memo_key(op)?;
                self.memo_get(key)?
            }
            b'q' | b'r' | b'p' => {
                let key = self.memo_key(op)?;
                self.memo_put(key)?
            }
            0x94 => self.memo_put(self.memo.len() as u64)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The memo key argument of a GET or PUT opcode.
    fn memo_key(&mut self, op: u8) -> Result<u64> {
        Ok(match op {
            b'h' | b'q' => self.u8()? as u64,
            b'j' | b'r' => self.u32()? as u64,
            _ => self.line()?.trim().parse().context("bad memo index")?,
        })
    }

    /// Classes, calls, BUILD and persistent ids; false if `op` is not one of them.
    fn object(&mut self, op: u8) -> Result<bool> {
        match op {
            b'c' | b'i' => {
                let (module_name, class_name) = (self.line()?, self.line()?);
                let class = self.add(Node::Leaf(Object::Class { module_name, class_name }));
                if op == b'i' {
                    let args = self.pop_mark()?;
                    let args = self.add(Node::Tuple(args));
                    self.call(class, args);
                } else {
                    self.stack.push(class);
                }
            }
            0x93 => {
                let [m, n] = self.pop_n(2)?[..] else { unreachable!() };
                let class = Object::Class { module_name: self.string(m)?, class_name: self.string(n)? };
                self.leaf(class);
            }
            b'o' => {
                let mut items = self.pop_mark()?;
                if items.is_empty() {
                    bail!("OBJ without a class");
                }
                let class = items.remove(0);
                let args = self.add(Node::Tuple(items));
                self.call(class, args);
            }
            b'R' | 0x81 | 0x92 => {
                let n = if op == 0x92 { 3 } else { 2 };
                let v = self.pop_n(n)?;
                self.call(v[0], v[1]);
            }
            b'b' => self.build()?,
            b'Q' => {
                let pid = self.pop()?;
                self.push(Node::Persistent(pid));
            }
            b'P' => {
                let pid = Node::Leaf(Object::Unicode(self.line()?));
                let pid = self.add(pid);
                self.push(Node::Persistent(pid));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn string(&self, id: Id) -> Result<String> {
        match &self.nodes[id] {
            Node::Leaf(Object::Unicode(s)) => Ok(s.clone()),
            other => bail!("expected a string, got {other:?}"),
        }
    }

    /// `callable(*args)`, recorded; dicts and sets made by known classes become containers.
    fn call(&mut self, callable: Id, args: Id) {
        let name = match &self.nodes[callable] {
            Node::Leaf(Object::Class { module_name, class_name }) => (module_name.as_str(), class_name.as_str()),
            _ => ("", ""),
        };
        let first = match &self.nodes[args] {
            Node::Tuple(a) => a.first().map(|&i| &self.nodes[i]),
            _ => None,
        };
        let node = match (name, first) {
            (("collections", "OrderedDict" | "defaultdict"), Some(Node::List(items))) => {
                let pairs = items.iter().filter_map(|&i| match &self.nodes[i] {
                    Node::List(kv) | Node::Tuple(kv) if kv.len() == 2 => Some((kv[0], kv[1])),
                    _ => None,
                });
                Node::Dict(pairs.collect())
            }
            (("collections", "OrderedDict" | "defaultdict"), _) => Node::Dict(vec![]),
            (("builtins" | "__builtin__", "set" | "frozenset"), Some(Node::List(items) | Node::Tuple(items))) => {
                Node::Set(items.clone())
            }
            (("builtins" | "__builtin__", "set" | "frozenset"), None) => Node::Set(vec![]),
            _ => Node::Reduce(callable, args),
        };
        self.push(node);
    }

    /// `BUILD`: sets the state of the object on the stack, in place (so memo references see it).
    fn build(&mut self) -> Result<()> {
        let state = self.pop()?;
        let target = self.top()?;
        if let (Node::Dict(_), Node::Dict(extra)) = (&self.nodes[target], &self.nodes[state]) {
            // A dict with attributes (a state dict's `_metadata`): merged, as candle does.
            self.merge_budget = self.merge_budget.checked_sub(extra.len()).context("BUILD copies too many items")?;
            let extra = extra.clone();
            let Node::Dict(d) = &mut self.nodes[target] else { unreachable!() };
            d.extend(extra);
            return Ok(());
        }
        let object = std::mem::replace(&mut self.nodes[target], Node::Leaf(Object::None));
        let inner = self.add(object);
        self.nodes[target] = Node::Build(inner, state);
        Ok(())
    }
}

fn pairs(items: Vec<Id>) -> Result<Vec<(Id, Id)>> {
    if !items.len().is_multiple_of(2) {
        bail!("odd number of dict items");
    }
    Ok(items.chunks_exact(2).map(|c| (c[0], c[1])).collect())
}

/// The protocol 0 `INT`, `LONG` and `FLOAT` arguments.
fn text_number(op: u8, s: &str) -> Result<Object> {
    let s = s.trim();
    Ok(match (op, s) {
        (b'I', "00") => Object::Bool(false),
        (b'I', "01") => Object::Bool(true),
        (b'F', _) => Object::Float(s.parse().with_context(|| format!("bad float {s:?}"))?),
        _ => {
            let v: i64 = s.trim_end_matches('L').parse().with_context(|| format!("bad integer {s:?}"))?;
            if op == b'I' {
                i32::try_from(v).map_or(Object::Long(v), Object::Int)
            } else {
                Object::Long(v)
            }
        }
    })
}

/// Turns arena objects into [`Object`] trees.
struct Converter<'a> {
    nodes: &'a [Node],
    /// Objects being converted (on the current path): a reference to one is a cycle.
    active: Vec<bool>,
    budget: usize,
}

impl Converter<'_> {
    fn object(&mut self, id: Id, depth: usize) -> Result<Object> {
        if depth > MAX_DEPTH {
            bail!("pickle nests deeper than {MAX_DEPTH} levels");
        }
        if self.active[id] {
            return Ok(Object::None);
        }
        self.budget = self.budget.checked_sub(1).context("pickle expands to too many objects")?;
        self.active[id] = true;
        let d = depth + 1;
        let nodes = self.nodes;
        let o = match &nodes[id] {
            Node::Leaf(o) => Ok(o.clone()),
            Node::Tuple(v) => self.list(v, d).map(Object::Tuple),
            Node::List(v) => self.list(v, d).map(Object::List),
            Node::Set(v) => self.list(v, d).map(|l| call_leaf("builtins", "set", vec![Object::List(l)])),
            Node::Dict(v) => v
                .iter()
                .map(|&(k, x)| Ok((self.object(k, d)?, self.object(x, d)?)))
                .collect::<Result<_>>()
                .map(Object::Dict),
            Node::Reduce(c, a) => self.pair(*c, *a, d).map(|(c, a)| Object::Reduce { callable: c, args: a }),
            Node::Build(c, a) => self.pair(*c, *a, d).map(|(c, a)| Object::Build { callable: c, args: a }),
            Node::Persistent(p) => self.object(*p, d).map(|p| Object::PersistentLoad(Box::new(p))),
        };
        self.active[id] = false;
        o
    }

    fn list(&mut self, ids: &[Id], depth: usize) -> Result<Vec<Object>> {
        ids.iter().map(|&i| self.object(i, depth)).collect()
    }

    fn pair(&mut self, a: Id, b: Id, depth: usize) -> Result<(Box<Object>, Box<Object>)> {
        Ok((Box::new(self.object(a, depth)?), Box::new(self.object(b, depth)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn parsed(h: &str) -> Object {
        let b = hex(h);
        let (o, n) = parse(&b).unwrap();
        assert_eq!(n, b.len());
        o
    }

    fn u(s: &str) -> Object {
        Object::Unicode(s.into())
    }

    fn get<'a>(o: &'a Object, key: &str) -> &'a Object {
        let Object::Dict(items) = o else { panic!("not a dict: {o:?}") };
        &items.iter().find(|(k, _)| *k == u(key)).unwrap_or_else(|| panic!("no {key}")).1
    }

    #[test]
    fn weights_pickle_memo_holds_references() {
        // d = {'a': 1}; pickle.dumps([d, d], 2): the second d comes from the memo, after SETITEMS.
        let d = Object::Dict(vec![(u("a"), Object::Int(1))]);
        assert_eq!(parsed("80025d7100287d710158010000006171024b01736801652e"), Object::List(vec![d.clone(), d]));
        // l = []; l.append(l): the cycle becomes None.
        assert_eq!(parsed("80025d71006800612e"), Object::List(vec![Object::None]));
    }

    #[test]
    fn weights_pickle_protocol5_and_protocol0() {
        let o = parsed(concat!(
            "800595ac000000000000007d94288c0173948f94284b014b02908c016694284b0391948c016294430378797a948c02",
            "6261949602000000000000006162948c03626967948a090000000000000000408c036e6567944afbffffff8c026e6c",
            "948a060000000000ff8c02666c94473ff80000000000008c026f64948c0b636f6c6c656374696f6e73948c0b4f7264",
            "65726564446963749493942952948c016b948c017694738c0174944b0185948c0175948c02c3a994752e"
        ));
        let set = |v: Vec<Object>| call_leaf("builtins", "set", vec![Object::List(v)]);
        assert_eq!(get(&o, "s"), &set(vec![Object::Int(1), Object::Int(2)]));
        assert_eq!(get(&o, "f"), &set(vec![Object::Int(3)]));
        assert_eq!(get(&o, "b"), &call_leaf("builtins", "bytes", vec![Object::Long(3)]));
        assert_eq!(get(&o, "ba"), &call_leaf("builtins", "bytes", vec![Object::Long(2)]));
        assert_eq!(get(&o, "big"), &Object::Float(2f64.powi(70)));
        assert_eq!(get(&o, "neg"), &Object::Int(-5));
        assert_eq!(get(&o, "nl"), &Object::Long(-(1 << 40)));
        assert_eq!(get(&o, "fl"), &Object::Float(1.5));
        assert_eq!(get(&o, "od"), &Object::Dict(vec![(u("k"), u("v"))]));
        assert_eq!(get(&o, "t"), &Object::Tuple(vec![Object::Int(1)]));
        assert_eq!(get(&o, "u"), &u("é"));
        // Protocol 0 (text opcodes): {'a': [1, 2.5, 'x', None, True], 'L': 2**40}.
        let o = parsed(concat!(
            "286470300a56610a70310a286c70320a49310a6146322e350a6156780a70330a614e614930310a6173564c0a70340a",
            "4c313039393531313632373737364c0a732e"
        ));
        let list = vec![Object::Int(1), Object::Float(2.5), u("x"), Object::None, Object::Bool(true)];
        assert_eq!(get(&o, "a"), &Object::List(list));
        assert_eq!(get(&o, "L"), &Object::Long(1 << 40));
    }

    #[test]
    fn weights_pickle_bad_input_errors() {
        let b = hex("800595ac000000000000007d94288c0173948f94284b014b02908c016694284b0391948c016294430378797a948c02");
        for n in 0..b.len() {
            assert!(parse(&b[..n]).is_err(), "prefix of {n} bytes parsed");
        }
        let e = format!("{:#}", parse(b"\x80\x02\xff.").unwrap_err());
        assert!(e.contains("unsupported pickle opcode 0xff"), "{e}");
        let e = format!("{:#}", parse(b"\x80\x02h\x05.").unwrap_err());
        assert!(e.contains("memo key 5 not set"), "{e}");
        // A huge declared length is refused before anything is allocated.
        let e = format!("{:#}", parse(b"\x8d\xff\xff\xff\xff\xff\xff\xff\x7f.").unwrap_err());
        assert!(e.contains("left (truncated?)"), "{e}");
        // Deep nesting is refused, not a stack overflow.
        let mut deep = vec![b']'; 100_000];
        deep.extend(std::iter::repeat_n(b'a', 99_999));
        deep.push(b'.');
        assert!(format!("{:#}", parse(&deep).unwrap_err()).contains("deeper than"));
        // Exponential sharing (each list holds the previous one twice) hits the object budget.
        let mut bomb = b"]q\x00".to_vec();
        for i in 0..40u8 {
            bomb.extend_from_slice(&[b'(', b'h', i, b'h', i, b'l', b'q', i + 1]);
        }
        bomb.push(b'.');
        assert!(format!("{:#}", parse(&bomb).unwrap_err()).contains("too many objects"));
        // Merging one dict into another again and again cannot outgrow the file.
        let mut merges = b"}q\x00(".to_vec();
        for i in 0..200u8 {
            merges.extend_from_slice(&[b'K', i, b'K', i]);
        }
        merges.extend_from_slice(b"u}q\x01");
        merges.extend(std::iter::repeat_n(*b"h\x00b", 500).flatten());
        merges.extend_from_slice(b"0h\x01.");
        assert!(format!("{:#}", parse(&merges).unwrap_err()).contains("BUILD copies too many items"));
    }
}
