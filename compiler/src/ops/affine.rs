//! Fixed per-channel affine maps: `channel_affine(scale=[...], shift=[...])` computes
//! `x * scale[c] + shift[c]` for each channel `c` (the first sample dim, PyTorch dim 1) and owns
//! no parameters, like torchvision Inception-v3's `_transform_input`.

use super::{fmt_shape, Args, ShapeError};
use crate::diag::Diagnostic;
use crate::ir::Op;

pub(super) fn build(a: &mut Args) -> Result<Op, Diagnostic> {
    let scale = a.floats(&["scale"])?;
    let shift = a.floats(&["shift"])?;
    Ok(Op::ChannelAffine { scale, shift })
}

pub(super) fn infer(op: &Op, x: &[usize]) -> Result<Vec<usize>, ShapeError> {
    let Op::ChannelAffine { scale, shift } = op else { unreachable!("not a channel_affine op") };
    let Some(&c) = x.first() else {
        return Err(ShapeError::new("`channel_affine` needs an input with a channel dimension"));
    };
    if scale.len() != c || shift.len() != c {
        return Err(ShapeError::new(format!(
            "`channel_affine` needs one scale and one shift per channel: the input {} has {c} channels, found {} scale and {} shift values",
            fmt_shape(x),
            scale.len(),
            shift.len()
        ))
        .hint(format!("give `scale` and `shift` {c} values each")));
    }
    Ok(x.to_vec())
}

#[cfg(test)]
mod tests {
    use crate::span::MemoryLoader;
    use crate::{compile, Options};

    fn compile_one(graph: &str) -> crate::Compiled {
        let text = format!("name: t\ninput: [3, 4, 4]\ngraph:\n{graph}");
        let loader = MemoryLoader([("t.yaml".to_string(), text)].into_iter().collect());
        compile("t.yaml", &loader, &Options::default())
    }

    #[test]
    fn keeps_the_shape_and_owns_no_parameters() {
        let c = compile_one("  - t: channel_affine(scale=[0.229 / 0.5, 0.224 / 0.5, 0.225 / 0.5], shift=[-0.03, -0.088, -0.188])\n");
        let g = c.graph.expect("compiles");
        let (_, n) = g.nodes().last().unwrap();
        assert_eq!((n.name.as_str(), n.shape.as_deref(), n.params.len()), ("t", Some(&[3usize, 4, 4][..]), 0));
        let crate::ir::Op::ChannelAffine { scale, shift } = &n.op else { panic!("{:?}", n.op) };
        assert!((scale[0] - 0.458).abs() < 1e-12 && shift.len() == 3);
    }

    #[test]
    fn a_wrong_length_points_at_the_call() {
        let call = "channel_affine(scale=[1, 2], shift=[0, 0, 0])";
        let c = compile_one(&format!("  - {call}\n"));
        assert!(c.graph.is_none());
        let d = &c.diagnostics[0];
        assert_eq!(d.code, "E0310", "{d:?}");
        assert!(d.message.contains("3 channels, found 2 scale and 3 shift values"), "{}", d.message);
        let text = format!("name: t\ninput: [3, 4, 4]\ngraph:\n  - {call}\n");
        assert_eq!(&text[d.labels[0].span.range()], call);
    }

    #[test]
    fn rejects_non_numbers() {
        let c = compile_one("  - channel_affine(scale=[1, 2, true], shift=[0, 0, 0])\n");
        assert_eq!(c.diagnostics[0].code, "E0202", "{:?}", c.diagnostics);
        let c = compile_one("  - channel_affine(scale=2, shift=[0, 0, 0])\n");
        assert_eq!(c.diagnostics[0].code, "E0202", "{:?}", c.diagnostics);
        let c = compile_one("  - channel_affine(scale=[1, 1, 1])\n");
        assert_eq!(c.diagnostics[0].code, "E0201", "{:?}", c.diagnostics);
    }
}
