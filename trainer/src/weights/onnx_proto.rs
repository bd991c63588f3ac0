//! The ONNX file format, written by hand: the few messages of `onnx.proto` an inference
//! graph needs ([`Model`], [`Node`], [`Initializer`], [`ValueInfo`]), encoded in Protocol
//! Buffers' wire format ([`Message`]).
//!
//! Field numbers are those of `onnx.proto` (IR version 8, opset 17). Every field is written
//! as proto2 writes it: scalars with their own key, repeated integers unpacked, which every
//! reader accepts. Tensors' values go into `raw_data` as little-endian bytes.

/// The ONNX IR version written ([`Model::encode`]): 8, the version of opset 17.
pub const IR_VERSION: i64 = 8;

/// A message under construction in Protocol Buffers' wire format.
#[derive(Debug, Default, Clone)]
pub struct Message(Vec<u8>);

/// Protocol Buffers' wire types.
const VARINT: u64 = 0;
const LENGTH_DELIMITED: u64 = 2;
const FIXED32: u64 = 5;

impl Message {
    /// An empty message.
    pub fn new() -> Self {
        Self::default()
    }

    /// The encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push((value as u8 & 0x7f) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn key(&mut self, field: u32, wire: u64) {
        self.varint((u64::from(field) << 3) | wire);
    }

    /// An `int64`, `int32` or enum field (negative values take ten bytes, as in protobuf).
    pub fn int(&mut self, field: u32, value: i64) -> &mut Self {
        self.key(field, VARINT);
        self.varint(value as u64);
        self
    }

    /// A `float` field.
    pub fn float(&mut self, field: u32, value: f32) -> &mut Self {
        self.key(field, FIXED32);
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// A `bytes` field.
    pub fn bytes(&mut self, field: u32, value: &[u8]) -> &mut Self {
        self.key(field, LENGTH_DELIMITED);
        self.varint(value.len() as u64);
        self.0.extend_from_slice(value);
        self
    }

    /// A `string` field.
    pub fn string(&mut self, field: u32, value: &str) -> &mut Self {
        self.bytes(field, value.as_bytes())
    }

    /// A field holding another message.
    pub fn message(&mut self, field: u32, value: &Message) -> &mut Self {
        self.bytes(field, &value.0)
    }
}

/// ONNX's element types (`TensorProto.DataType`) that the graphs here use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemType {
    Float = 1,
    Int64 = 7,
    Float16 = 10,
}

/// A node attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Float(f32),
    Int(i64),
    Ints(Vec<i64>),
}

/// One operation of the graph (`NodeProto`), in the default domain (`ai.onnx`).
#[derive(Debug, Clone)]
pub struct Node {
    /// The operator, e.g. `MatMul`.
    pub op: &'static str,
    /// Unique node name.
    pub name: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<(&'static str, Attr)>,
}

/// A constant of the graph (`TensorProto` in `GraphProto.initializer`): a weight, or a
/// shape or index that an operator takes as an input.
#[derive(Debug, Clone)]
pub struct Initializer {
    pub name: String,
    pub dims: Vec<i64>,
    pub values: Values,
}

/// An initializer's values, row-major.
#[derive(Debug, Clone)]
pub enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
    /// IEEE half-precision values, as their bits.
    F16(Vec<u16>),
}

/// One dimension of a graph input's or output's shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Fixed(i64),
    /// A symbolic size, the same wherever the name appears (e.g. `batch`).
    Named(String),
}

/// A graph input or output (`ValueInfoProto`): a tensor of a type and shape.
#[derive(Debug, Clone)]
pub struct ValueInfo {
    pub name: String,
    pub elem: ElemType,
    pub dims: Vec<Dim>,
    pub doc: String,
}

/// A whole model (`ModelProto` with its one `GraphProto`).
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub producer: String,
    pub producer_version: String,
    pub doc: String,
    pub graph_name: String,
    /// The `ai.onnx` operator set version.
    pub opset: i64,
    pub nodes: Vec<Node>,
    pub initializers: Vec<Initializer>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    /// `metadata_props`: key-value strings a runtime shows (ONNX Runtime's
    /// `modelMetadata.customMetadataMap`).
    pub metadata: Vec<(String, String)>,
}

impl Node {
    fn encode(&self) -> Message {
        let mut m = Message::new();
        for input in &self.inputs {
            m.string(1, input);
        }
        for output in &self.outputs {
            m.string(2, output);
        }
        m.string(3, &self.name).string(4, self.op);
        for (name, value) in &self.attributes {
            let mut a = Message::new();
            a.string(1, name);
            // AttributeProto.type: FLOAT 1, INT 2, INTS 7.
            match value {
                Attr::Float(f) => a.float(2, *f).int(20, 1),
                Attr::Int(i) => a.int(3, *i).int(20, 2),
                Attr::Ints(ints) => {
                    for i in ints {
                        a.int(8, *i);
                    }
                    a.int(20, 7)
                }
            };
            m.message(5, &a);
        }
        m
    }
}

impl Initializer {
    fn encode(&self) -> Message {
        let mut m = Message::new();
        for d in &self.dims {
            m.int(1, *d);
        }
        let (elem, raw): (ElemType, Vec<u8>) = match &self.values {
            Values::F32(v) => (
                ElemType::Float,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            Values::I64(v) => (
                ElemType::Int64,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            Values::F16(v) => (
                ElemType::Float16,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
        };
        m.int(2, elem as i64).string(8, &self.name).bytes(9, &raw);
        m
    }

    /// Number of values the dimensions call for.
    pub fn expected_count(&self) -> usize {
        self.dims.iter().map(|&d| d.max(0) as usize).product()
    }

    /// Number of values held.
    pub fn value_count(&self) -> usize {
        match &self.values {
            Values::F32(v) => v.len(),
            Values::I64(v) => v.len(),
            Values::F16(v) => v.len(),
        }
    }
}

impl ValueInfo {
    fn encode(&self) -> Message {
        let mut shape = Message::new();
        for d in &self.dims {
            let mut dim = Message::new();
            match d {
                Dim::Fixed(v) => dim.int(1, *v),
                Dim::Named(name) => dim.string(2, name),
            };
            shape.message(1, &dim);
        }
        let mut tensor = Message::new();
        tensor.int(1, self.elem as i64).message(2, &shape);
        let mut ty = Message::new();
        ty.message(1, &tensor);
        let mut m = Message::new();
        m.string(1, &self.name).message(2, &ty);
        if !self.doc.is_empty() {
            m.string(3, &self.doc);
        }
        m
    }
}

impl Model {
    /// The model as the bytes of an `.onnx` file.
    pub fn encode(&self) -> Vec<u8> {
        let mut graph = Message::new();
        for node in &self.nodes {
            graph.message(1, &node.encode());
        }
        graph.string(2, &self.graph_name);
        for init in &self.initializers {
            graph.message(5, &init.encode());
        }
        for input in &self.inputs {
            graph.message(11, &input.encode());
        }
        for output in &self.outputs {
            graph.message(12, &output.encode());
        }
        let mut opset = Message::new();
        opset.string(1, "").int(2, self.opset);
        let mut m = Message::new();
        m.int(1, IR_VERSION)
            .string(2, &self.producer)
            .string(3, &self.producer_version)
            .string(6, &self.doc)
            .message(7, &graph)
            .message(8, &opset);
        for (key, value) in &self.metadata {
            let mut entry = Message::new();
            entry.string(1, key).string(2, value);
            m.message(14, &entry);
        }
        m.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_keys_match_the_protobuf_encoding_guide() {
        // protobuf.dev "Encoding": field 1 = 150 is 08 96 01; 300 is ac 02.
        let mut m = Message::new();
        m.int(1, 150);
        assert_eq!(m.clone().into_bytes(), [0x08, 0x96, 0x01]);
        let mut m = Message::new();
        m.int(2, 300);
        assert_eq!(m.into_bytes(), [0x10, 0xac, 0x02]);
        // A string field 2 = "testing": 12 07 74 65 73 74 69 6e 67.
        let mut m = Message::new();
        m.string(2, "testing");
        assert_eq!(
            m.into_bytes(),
            [0x12, 0x07, 0x74, 0x65, 0x73, 0x74, 0x69, 0x6e, 0x67]
        );
        // Negative int64 values are ten bytes of two's complement: -1 = ff ff ... 01.
        let mut m = Message::new();
        m.int(1, -1);
        let mut want = vec![0x08];
        want.extend([0xff; 9]);
        want.push(0x01);
        assert_eq!(m.into_bytes(), want);
        // A float (fixed32, wire type 5) field 2 = 1.0: 15 00 00 80 3f.
        let mut m = Message::new();
        m.float(2, 1.0);
        assert_eq!(m.into_bytes(), [0x15, 0x00, 0x00, 0x80, 0x3f]);
        // A field number above 15 takes a two-byte key: field 20, varint 7 -> a0 01 07.
        let mut m = Message::new();
        m.int(20, 7);
        assert_eq!(m.into_bytes(), [0xa0, 0x01, 0x07]);
    }

    #[test]
    fn a_node_encodes_inputs_outputs_name_op_and_attributes_in_field_order() {
        let node = Node {
            op: "Softmax",
            name: "s".into(),
            inputs: vec!["x".into()],
            outputs: vec!["y".into()],
            attributes: vec![("axis", Attr::Int(-1))],
        };
        let mut want = vec![0x0a, 1, b'x', 0x12, 1, b'y', 0x1a, 1, b's', 0x22, 7];
        want.extend(b"Softmax");
        // attribute (field 5): name "axis", i = -1 (ten bytes), type INT (2).
        let mut attr = vec![0x0a, 4];
        attr.extend(b"axis");
        attr.push(0x18);
        attr.extend([0xff; 9]);
        attr.push(0x01);
        attr.extend([0xa0, 0x01, 0x02]);
        want.push(0x2a);
        want.push(attr.len() as u8);
        want.extend(attr);
        assert_eq!(node.encode().into_bytes(), want);
    }
}
