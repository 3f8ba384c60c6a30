//! A small builder of in-memory ONNX protos (`tract_onnx::pb`). It only knows how to name values
//! and make nodes, attributes and constants; what to build is `lower.rs`'s job.
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// Opset 13: `ReduceMean` still takes `axes` as an attribute (an input from opset 18), `Softmax`
/// normalizes over the one axis it is given, and tract has covered this opset longest.
pub const OPSET: i64 = 13;

#[derive(Default)]
pub struct ProtoBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    next: usize,
}

pub fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

fn value_info(name: &str, elem: DataType, shape: &[usize]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn dims(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

impl ProtoBuilder {
    /// A fresh value name. Names are ours alone (`v0`, `v1`, ...), so user-chosen input names
    /// or weight paths can never collide with each other or need escaping.
    pub fn fresh(&mut self) -> String {
        self.next += 1;
        format!("v{}", self.next - 1)
    }

    /// Appends a one-output node and returns the name of its output.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    /// An f32 initializer. Takes the data by value so weights are moved, not copied.
    pub fn const_f32(&mut self, shape: &[usize], data: Vec<f32>) -> String {
        let name = self.fresh();
        self.initializers.push(TensorProto {
            dims: dims(shape),
            data_type: DataType::Float as i32,
            float_data: data,
            name: name.clone(),
            ..Default::default()
        });
        name
    }

    pub fn const_i64(&mut self, shape: &[usize], data: Vec<i64>) -> String {
        let name = self.fresh();
        self.initializers.push(TensorProto {
            dims: dims(shape),
            data_type: DataType::Int64 as i32,
            int64_data: data,
            name: name.clone(),
            ..Default::default()
        });
        name
    }

    /// A 1-D int64 constant, the form ONNX wants for shapes and axes.
    pub fn const_ints(&mut self, v: &[i64]) -> String {
        self.const_i64(&[v.len()], v.to_vec())
    }

    pub fn input(&mut self, shape: &[usize], int64: bool) -> String {
        let name = self.fresh();
        let elem = if int64 {
            DataType::Int64
        } else {
            DataType::Float
        };
        self.inputs.push(value_info(&name, elem, shape));
        name
    }

    pub fn output(&mut self, name: &str, shape: &[usize]) {
        self.outputs.push(value_info(name, DataType::Float, shape));
    }

    pub fn finish(self) -> ModelProto {
        ModelProto {
            ir_version: 7,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "ldm-edge".into(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: "ldm".into(),
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}
